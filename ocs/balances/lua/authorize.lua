-- authorize: take a line and reserve funds for a new call, atomically on one account.
--
-- KEYS[1] account hash          acct:{b:N}:<account>
-- KEYS[2] live-calls hash       calls:{b:N}:<account>   (its length = lines in use)
-- KEYS[3] expiry sorted set     expiry:{b:N}
-- KEYS[4] stopped-call key      stopped:{b:N}:<account>:<call id>
-- ARGV[1]  call id
-- ARGV[2]  plan id the caller rated against; must equal the account's plan
-- ARGV[3]  cost of the first block (micro-units): the least a call can cost
-- ARGV[4]  minimum available funds the plan requires to start a call
-- ARGV[5]  cost of the plan's longest allowed call: the most a reservation holds
-- ARGV[6]  live-call record (msgpack, opaque to this script)
-- ARGV[7]  expiry (epoch seconds) of the live call
-- ARGV[8]  expiry set member ("<account>\0<call id>")
-- ARGV[9]  password digest to check: "" skips the check (trusted channel); any other
--          value must equal the account's digest when the account has one
-- ARGV[10] now (epoch seconds), for the account's expiry date
-- ARGV[11] start time (epoch seconds) of the call, 0 when a Start is still to come
--
-- Returns one of
--   {"OK", reserved, available_before, balance, credit_limit}
--   {"DUP", "<entry>", available_now, credit_limit}
--                             the call id is already live: its entry (see below)
--   {"DONE"}                  the call id was already stopped
--   {"PLAN", actual_plan}     rate again with the account's real plan
--   {"REJ", reason}
-- A live-calls entry is "<held>|<started>|<used>|<debited>|<record>": funds still
-- held, start time (0 = not started), last reported seconds, amount debited so far.
-- A reservation is min(available, ARGV[5]); the caller turns it into the longest
-- duration it pays for with the shared rating function.

-- Lua 5.1 prints large numbers as %.14g ("1e+14"); pass integers as exact strings.
local function int(x) return string.format('%d', x) end

if redis.call('EXISTS', KEYS[1]) == 0 then
  return {'REJ', 'account_not_found'}
end
local a = redis.call('HMGET', KEYS[1], 'status', 'plan', 'balance', 'credit_limit', 'reserved',
  'max_lines', 'pw', 'expires')
if a[2] ~= ARGV[2] then
  return {'PLAN', a[2]}
end
-- The password comes before anything that would tell a stranger about the account.
if ARGV[9] ~= '' and a[7] and a[7] ~= '' and a[7] ~= ARGV[9] then
  return {'REJ', 'invalid_password'}
end
if a[1] ~= 'active' then
  return {'REJ', 'account_' .. a[1]}
end
if a[8] and tonumber(a[8]) > 0 and tonumber(ARGV[10]) >= tonumber(a[8]) then
  return {'REJ', 'account_expired'}
end
local existing = redis.call('HGET', KEYS[2], ARGV[1])
if existing then
  local available_now = tonumber(a[3]) + tonumber(a[4]) - tonumber(a[5])
  return {'DUP', existing, available_now, tonumber(a[4])}
end
if redis.call('EXISTS', KEYS[4]) == 1 then
  return {'DONE'}
end
if redis.call('HLEN', KEYS[2]) >= tonumber(a[6]) then
  return {'REJ', 'no_free_line'}
end
local balance = tonumber(a[3])
local credit_limit = tonumber(a[4])
local available = balance + credit_limit - tonumber(a[5])
if available <= 0 then
  if credit_limit > 0 then
    return {'REJ', 'credit_limit_reached'}
  end
  return {'REJ', 'zero_balance'}
end
if available < tonumber(ARGV[4]) then
  return {'REJ', 'below_minimum_balance'}
end
if available < tonumber(ARGV[3]) then
  return {'REJ', 'insufficient_funds'}
end
local reserve = tonumber(ARGV[5])
if available < reserve then
  reserve = available
end
redis.call('HINCRBY', KEYS[1], 'reserved', int(reserve))
redis.call('HSET', KEYS[2], ARGV[1], int(reserve) .. '|' .. ARGV[11] .. '|0|0|' .. ARGV[6])
redis.call('ZADD', KEYS[3], ARGV[7], ARGV[8])
return {'OK', reserve, available, balance, credit_limit}
