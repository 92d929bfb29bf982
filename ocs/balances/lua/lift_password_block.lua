-- lift_password_block: an operator forgets an account's count of wrong passwords
-- (decision 0045), in one step, so no wrong password counted between reading the
-- count and clearing it is lost from the answer.
--
-- KEYS[1] account hash          acct:{b:N}:<account>
-- ARGV[1] now (epoch seconds)
--
-- Returns {"NOACCT"}, or {"OK", wrong passwords the window still counted (0: none)}.

local a = redis.call('HMGET', KEYS[1], 'status', 'pwfails', 'pwfail_until')
if not a[1] then
  return {'NOACCT'}
end
if a[2] or a[3] then
  redis.call('HDEL', KEYS[1], 'pwfails', 'pwfail_until')
end
return {'OK', password_fails_counted(a[2], a[3], tonumber(ARGV[1]))}
