-- check_password: judge a password for a request that reserves nothing (an IVR's
-- balance query), by the rule authorize.lua applies (lib.lua's password_refusal).
--
-- KEYS[1] account hash          acct:{b:N}:<account>
-- ARGV[1] password digest to check ("-": none was given, which no digest equals)
-- ARGV[2] now (epoch seconds)
-- ARGV[3] wrong passwords an account may take within the window
-- ARGV[4] the window (seconds), from the first wrong password
--
-- Returns {"OK"} (right, or the account has no password), {"NOACCT"}, or
-- {"REJ", reason, wrong passwords counted in the window}.

local a = redis.call('HMGET', KEYS[1], 'status', 'pw', 'pwfails', 'pwfail_until')
if not a[1] then
  return {'NOACCT'}
end
if not a[2] or a[2] == '' then
  return {'OK'}
end
local reason, counted = password_refusal(KEYS[1], a[2], ARGV[1], a[3], a[4], tonumber(ARGV[2]),
  tonumber(ARGV[3]), tonumber(ARGV[4]))
if reason then
  return {'REJ', reason, counted}
end
return {'OK'}
