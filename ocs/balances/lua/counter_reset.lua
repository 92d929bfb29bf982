-- counter_reset: start a new cycle of an account's usage counters.
--
-- KEYS[1] counters hash         counters:{b:N}:<account>
-- ARGV: triples of (counter id, seconds per cycle, "1" to carry unused seconds over),
--       or "-cancel", <counter id> to cancel that one counter only;
--       a counter of the hash that is not named is removed (cancelled or inactive);
--       while calls still hold its seconds it is marked "gone" instead, applies to no
--       new call, and the last of those calls removes it (stop.lua).
--
-- A counter's new limit is its seconds plus, with carryover, what the last cycle
-- left unused (limit - used). Seconds held by live calls stay held: those calls
-- count what they use against the new cycle when they stop, so the held seconds are
-- carried over with the rest (taken off here as well, they would count twice).
-- Returns the number of counters set.

local named = {}
local only = nil
local args = ARGV
if ARGV[1] == '-cancel' then
  -- Cancel one counter: ARGV[2] is its id; every other counter keeps its cycle.
  only = ARGV[2]
  args = {}
end
for i = 1, #args, 3 do
  local id = args[i]
  named[id] = true
  local c = redis.call('HMGET', KEYS[1], id .. ':limit', id .. ':used')
  local limit = tonumber(args[i + 1])
  if args[i + 2] == '1' and c[1] then
    limit = limit + math.max(tonumber(c[1]) - tonumber(c[2] or 0), 0)
  end
  redis.call('HSET', KEYS[1], id .. ':limit', int(limit), id .. ':used', 0)
  redis.call('HDEL', KEYS[1], id .. ':gone')
end
local fields = redis.call('HKEYS', KEYS[1])
for _, field in ipairs(fields) do
  local id = string.match(field, '^(.*):limit$')
  if id and not named[id] and (only == nil or id == only) then
    local held = tonumber(redis.call('HGET', KEYS[1], id .. ':held') or 0)
    if held <= 0 then
      redis.call('HDEL', KEYS[1], id .. ':limit', id .. ':used', id .. ':held', id .. ':gone')
    else
      redis.call('HSET', KEYS[1], id .. ':gone', 1)
    end
  end
end
if only then
  return 1
end
return #args / 3
