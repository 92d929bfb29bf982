-- counter_reset: start a new cycle of an account's usage counters.
--
-- KEYS[1] counters hash         counters:{b:N}:<account>
-- ARGV: triples of (counter id, seconds per cycle, "1" to carry unused seconds over);
--       a counter of the hash that is not named is removed (cancelled or inactive),
--       unless calls still hold its seconds.
--
-- A counter's new limit is its seconds plus, with carryover, what the last cycle
-- left unused (limit - used - held). Seconds held by live calls stay held: those
-- calls count what they use against the new cycle when they stop.
-- Returns the number of counters set.

local function int(x) return string.format('%d', x) end

local named = {}
for i = 1, #ARGV, 3 do
  local id = ARGV[i]
  named[id] = true
  local c = redis.call('HMGET', KEYS[1], id .. ':limit', id .. ':used', id .. ':held')
  local limit = tonumber(ARGV[i + 1])
  if ARGV[i + 2] == '1' and c[1] then
    limit = limit + math.max(tonumber(c[1]) - tonumber(c[2] or 0) - tonumber(c[3] or 0), 0)
  end
  redis.call('HSET', KEYS[1], id .. ':limit', int(limit), id .. ':used', 0)
end
local fields = redis.call('HKEYS', KEYS[1])
for _, field in ipairs(fields) do
  local id = string.match(field, '^(.*):limit$')
  if id and not named[id] then
    local held = tonumber(redis.call('HGET', KEYS[1], id .. ':held') or 0)
    if held <= 0 then
      redis.call('HDEL', KEYS[1], id .. ':limit', id .. ':used', id .. ':held')
    end
  end
end
return #ARGV / 3
