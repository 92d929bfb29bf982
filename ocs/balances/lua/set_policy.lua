-- set_policy: change policy fields of an account's real-time state (credit limit,
-- lines, status...), in one step with what a changed credit limit means for the
-- funds forced debits left unbacked: a raised limit backs those holds again, so
-- 'forced' is cut to what they still lack (lib.lua, decision 0049).
--
-- A change of status or lock reason ('status', 'lock') stamps 'status_at' with Redis's
-- clock (epoch ms): when the account's status began, which decides whether a usage
-- import's record made before it is charged (lib.lua's imported_refused). Setting the
-- same status and lock again leaves it.
--
-- KEYS[1] account hash          acct:{b:N}:<account>
-- ARGV[1..2n] field, value pairs (at least one pair)
--
-- Returns 0 for an unknown account, 1 when set.

local a = redis.call('HMGET', KEYS[1], 'status', 'forced', 'lock')
if not a[1] then
  return 0
end
redis.call('HSET', KEYS[1], unpack(ARGV))
local now = redis.call('HMGET', KEYS[1], 'status', 'lock')
if now[1] ~= a[1] or (now[2] or '') ~= (a[3] or '') then
  redis.call('HSET', KEYS[1], 'status_at', int(math.floor(now_us() / 1000)))
end
local forced = tonumber(a[2] or 0)
if forced > 0 then
  local b = redis.call('HMGET', KEYS[1], 'balance', 'credit_limit', 'reserved')
  keep_forced_within(KEYS[1], forced, tonumber(b[1]), tonumber(b[2]), tonumber(b[3]))
end
return 1
