-- start_counter: give an account the first cycle of a counter it takes (buys).
--
-- KEYS[1] counters hash         counters:{b:N}:<account>
-- ARGV[1] counter id
-- ARGV[2] seconds of a cycle
--
-- A counter the account already has is left as it is. One cancelled while live calls
-- still held some of it (marked "gone", counter_reset.lua) is not: taken again, and
-- paid for again, it starts a fresh cycle (limit = ARGV[2], used = 0). The seconds those
-- calls hold stay held, and they count what they use against this cycle when they stop,
-- as after a reset.
-- A fresh cycle carries nothing from an earlier one, and a record of a closed cycle draws
-- nothing on it: only on what that cycle left, kept aside when the counter was cancelled
-- ('<id>:closed', counter_reset.lua), which stays.
-- A fresh cycle, paid by the purchase: stamped as bought in the account's current cycle
-- (lib.lua's bought_in_cycle), so a reset run again for that cycle leaves it.
-- Returns 1 when a cycle started, 0 when the account has the counter already.

local id = ARGV[1]
local c = redis.call('HMGET', KEYS[1], id .. ':limit', id .. ':gone')
if c[1] and not c[2] then
  return 0
end
redis.call('HSET', KEYS[1], id .. ':limit', ARGV[2], id .. ':used', 0)
redis.call('HDEL', KEYS[1], id .. ':gone', id .. ':carried')
bought_in_cycle(KEYS[1], id)
return 1
