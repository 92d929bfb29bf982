-- counter_reset: start a new cycle of an account's usage counters.
--
-- KEYS[1] counters hash         counters:{b:N}:<account>
-- ARGV[1] the cycle's label (such as "2026-12"), then triples of (counter id, seconds
--       per cycle, "1" to carry unused seconds over);
--       or "-cancel", <counter id> to cancel that one counter only;
--       a counter of the hash that is not named is removed (cancelled or inactive);
--       while calls still hold its seconds it is marked "gone" instead, applies to no
--       new call, and the last of those calls removes it (stop.lua).
--
-- A counter's new limit is its seconds plus, with carryover, what the last cycle
-- left unused (limit - used). Seconds held by live calls stay held: those calls
-- count what they use against the new cycle when they stop, so the held seconds are
-- carried over with the rest (taken off here as well, they would count twice).
-- A counter keeps the label of the cycle it last started ('<id>:cycle'): a reset run
-- again for that cycle (a retry) leaves it as it is, so its seconds are not given twice.
-- Returns the number of counters set.

local named = {}
local only = nil
local label = ARGV[1]
local first = 2
if ARGV[1] == '-cancel' then
  -- Cancel one counter: ARGV[2] is its id; every other counter keeps its cycle.
  only = ARGV[2]
  first = #ARGV + 1
end
local set = 0
for i = first, #ARGV, 3 do
  local id = ARGV[i]
  named[id] = true
  local c = redis.call('HMGET', KEYS[1], id .. ':limit', id .. ':used', id .. ':cycle',
    id .. ':gone')
  if not (c[1] and c[3] == label and not c[4]) then
    local limit = tonumber(ARGV[i + 1])
    if ARGV[i + 2] == '1' and c[1] then
      limit = limit + math.max(tonumber(c[1]) - tonumber(c[2] or 0), 0)
    end
    redis.call('HSET', KEYS[1], id .. ':limit', int(limit), id .. ':used', 0, id .. ':cycle',
      label)
    redis.call('HDEL', KEYS[1], id .. ':gone')
  end
  set = set + 1
end
local fields = redis.call('HKEYS', KEYS[1])
for _, field in ipairs(fields) do
  local id = string.match(field, '^(.*):limit$')
  if id and not named[id] and (only == nil or id == only) then
    local held = tonumber(redis.call('HGET', KEYS[1], id .. ':held') or 0)
    if held <= 0 then
      redis.call('HDEL', KEYS[1], id .. ':limit', id .. ':used', id .. ':held', id .. ':gone',
        id .. ':cycle')
    else
      redis.call('HSET', KEYS[1], id .. ':gone', 1)
    end
  end
end
if only then
  return 1
end
return set
