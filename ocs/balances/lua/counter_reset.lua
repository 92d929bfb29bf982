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
-- The account keeps the label of its last cycle ('cycle'): a counter bought, or a
-- mandatory one first used, during a cycle is stamped '<label>|bought' (start_counter.lua,
-- authorize.lua, charge_batch.lua), so a retry leaves it too, and owes no cycle fee for
-- it: its purchase paid the cycle.
-- Returns {number of counters set, {ids of the counters whose fee for this cycle is
-- owed}} (those it started now, and those a reset started for this cycle already: their
-- fee is charged once by its reference); 1 for a cancel.

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
local owed = {}
if not only and (first <= #ARGV or redis.call('EXISTS', KEYS[1]) == 1) then
  -- Kept where the account has counters: a hash for every account would cost memory.
  redis.call('HSET', KEYS[1], 'cycle', label)
end
for i = first, #ARGV, 3 do
  local id = ARGV[i]
  named[id] = true
  local c = redis.call('HMGET', KEYS[1], id .. ':limit', id .. ':used', id .. ':cycle',
    id .. ':gone')
  if c[1] and not c[4] and c[3] == label .. '|bought' then
    -- Bought (or first used) in this cycle, after its reset: the purchase paid it.
  elseif c[1] and not c[4] and c[3] == label then
    owed[#owed + 1] = id
  else
    owed[#owed + 1] = id
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
return {set, owed}
