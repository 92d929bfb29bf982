-- check_password: judge a password for a request that reserves nothing (an IVR's
-- balance query), by the rule authorize.lua applies (lib.lua's password_refusal).
--
-- KEYS[1] account hash          acct:{b:N}:<account>
-- ARGV[1] password digest to check ("-": none was given, which no digest equals)
-- ARGV[2] now (epoch seconds)
-- ARGV[3] wrong passwords an account may take within the window
-- ARGV[4] the window (seconds), from the first wrong password
-- ARGV[5] optional: the same password's digest in the old form (decision 0054). While
--         the account's stored digest is in the old form, it is what is compared, and a
--         right one re-keys the account: ARGV[1] replaces the stored digest. Left out,
--         such an account answers {"OLDPW"}, nothing counted (unless ARGV[1] is "-").
--
-- Returns {"OK"} (right, or the account has no password), {"NOACCT"}, {"OLDPW"}, or
-- {"REJ", reason, wrong passwords counted in the window}.

local a = redis.call('HMGET', KEYS[1], 'status', 'pw', 'pwfails', 'pwfail_until')
if not a[1] then
  return {'NOACCT'}
end
if not a[2] or a[2] == '' then
  return {'OK'}
end
local given = ARGV[1]
local old_form = given ~= a[2] and given ~= '-' and old_form_digest(a[2])
if old_form then
  if not ARGV[5] then
    return {'OLDPW'}
  end
  given = ARGV[5]
end
local reason, counted = password_refusal(KEYS[1], a[2], given, a[3], a[4], tonumber(ARGV[2]),
  tonumber(ARGV[3]), tonumber(ARGV[4]))
if reason then
  return {'REJ', reason, counted}
end
if old_form then
  redis.call('HSET', KEYS[1], 'pw', ARGV[1])
end
return {'OK'}
