-- counter_reset: start a new cycle of an account's usage counters.
--
-- KEYS[1] counters hash         counters:{b:N}:<account>
-- ARGV[1] the cycle's label (such as "2026-12"); ARGV[2] when the cycle's run began
--       (epoch microseconds, Redis's clock: the first run of this label over this
--       scope, when it is run again); then quadruples of (counter id, seconds per cycle,
--       "1" to carry unused seconds over, "1" for a mandatory counter);
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
-- The run read who has which counters before it reached this account, and the account
-- may have bought or cancelled one since; a retry may find an account created since the
-- first run. So a counter bought after ARGV[2] ('<id>:bought_at', lib.lua) is left as it
-- is, named or not, owing nothing: its purchase paid the cycle. A named counter the
-- account cancelled after ARGV[2] ('<id>:cancelled', stamped here) is not started again.
-- Cancels stamped before ARGV[2] are forgotten. At the same microsecond, a purchase or
-- cancel counts as before the run.
-- The account keeps when its current cycle began as well ('cycle_from', epoch ms: ARGV[2]
-- of the run that started the cycle). It is written only when the cycle starts (the
-- hash's 'cycle' is another label) or is missing: ARGV[2] is per scope, and a run again
-- of the label over another scope (one account's retry, days later) must not move it,
-- or the calls between would become the closed cycle's.
-- Each counter started anew keeps what the last cycle left free (limit - used - held
-- then; seconds live calls held count against the new cycle when they stop): with
-- carryover as '<id>:carried' (also added to the new limit), without as '<id>:closed'.
-- A mandatory counter the account never started keeps its whole seconds as '<id>:closed'
-- (not in the new limit, whatever its carryover): a record of the closed cycle imported in
-- time would have started it with them (charge_batch.lua, authorize.lua).
-- A usage record made before 'cycle_from' draws only on those (charge_batch.lua): the
-- cycle it was made in is closed. Only the last closed cycle is kept: a cycle that starts
-- keeps when the closing one began as 'closed_from' (none before the account's second
-- cycle: the first began when its counters did), and a record made before it draws on no
-- counter, paying the tariff (decision 0032). A cancel keeps what the closed cycle left as
-- '<id>:closed' (with carryover: the carried seconds the current cycle has not used), as
-- the bundle was live when that cycle's records were made; the next reset that starts a
-- new cycle removes it (a run again of the label keeps it). A counter a reset removes (or
-- marks "gone") keeps nothing: it was cancelled or inactive in the cycle that closes.
-- Returns {number of counters set, {ids of the counters whose fee for this cycle is
-- owed}} (those it started now, and those a reset started for this cycle already: their
-- fee is charged once by its reference); 1 for a cancel.

local named = {}
local only = nil
local label = ARGV[1]
local since = tonumber(ARGV[2])
local first = 3
if ARGV[1] == '-cancel' then
  -- Cancel one counter: ARGV[2] is its id; every other counter keeps its cycle.
  only = ARGV[2]
  first = #ARGV + 1
  redis.call('HSET', KEYS[1], only .. ':cancelled', int(now_us()))
end
-- Bought after the run began: its purchase paid this cycle; stamped with its label so
-- that a retry, which may begin later, leaves it as well.
local function bought_since(id)
  local at = redis.call('HGET', KEYS[1], id .. ':bought_at')
  if at and tonumber(at) > since then
    redis.call('HSET', KEYS[1], id .. ':cycle', label .. '|bought')
    return true
  end
  return false
end
-- What the closed cycle left free for its records made late: the seconds kept aside, or
-- the carried ones the current cycle has not used (they are in its limit).
local function closed_cycle_left(id)
  local f = redis.call('HMGET', KEYS[1], id .. ':limit', id .. ':used', id .. ':held',
    id .. ':carried', id .. ':closed')
  if f[4] then
    local free = tonumber(f[1] or 0) - tonumber(f[2] or 0) - tonumber(f[3] or 0)
    return math.max(math.min(free, tonumber(f[4])), 0)
  end
  return math.max(tonumber(f[5] or 0), 0)
end
local set = 0
local owed = {}
local fresh = false  -- the account's cycle starts now (not a run again of its label)
if not only and (first <= #ARGV or redis.call('EXISTS', KEYS[1]) == 1) then
  -- Kept where the account has counters: a hash for every account would cost memory.
  local was = redis.call('HMGET', KEYS[1], 'cycle', 'cycle_from')
  fresh = was[1] ~= label
  if fresh and was[2] then
    -- Only the cycle that closes now is kept (its '<id>:closed', '<id>:carried'): a
    -- record made before it began is of a cycle nothing is kept of (charge_batch.lua).
    redis.call('HSET', KEYS[1], 'closed_from', was[2])
  end
  if fresh or not was[2] then
    redis.call('HSET', KEYS[1], 'cycle_from', int(math.floor(since / 1000)))
  end
  redis.call('HSET', KEYS[1], 'cycle', label)
end
for i = first, #ARGV, 4 do
  local id = ARGV[i]
  named[id] = true
  local c = redis.call('HMGET', KEYS[1], id .. ':limit', id .. ':used', id .. ':cycle',
    id .. ':gone', id .. ':cancelled', id .. ':held')
  if c[1] and not c[4] and c[3] == label .. '|bought' then
    -- Bought (or first used) in this cycle, after its reset: the purchase paid it.
    set = set + 1
  elseif c[1] and not c[4] and c[3] == label then
    owed[#owed + 1] = id
    set = set + 1
  elseif c[1] and not c[4] and bought_since(id) then
    set = set + 1
  elseif not (c[1] and not c[4]) and c[5] and tonumber(c[5]) > since then
    -- Cancelled after the run read that the account had it: not started again.
    named[id] = nil
  else
    owed[#owed + 1] = id
    local limit = tonumber(ARGV[i + 1])
    -- What the closed cycle left free: all its records made late may still draw.
    local left = 0
    if not c[1] and ARGV[i + 3] == '1' then
      left = limit  -- mandatory, never started: the closed cycle had all of it free
    elseif c[1] then
      local unused = tonumber(c[1]) - tonumber(c[2] or 0)
      left = math.max(unused - tonumber(c[6] or 0), 0)
      if ARGV[i + 2] == '1' then
        limit = limit + math.max(unused, 0)
      end
    end
    redis.call('HSET', KEYS[1], id .. ':limit', int(limit), id .. ':used', 0, id .. ':cycle',
      label)
    redis.call('HDEL', KEYS[1], id .. ':carried', id .. ':closed')
    if left > 0 then
      local kept = (ARGV[i + 2] == '1' and c[1]) and ':carried' or ':closed'
      redis.call('HSET', KEYS[1], id .. kept, int(left))
    end
    redis.call('HDEL', KEYS[1], id .. ':gone')
    set = set + 1
  end
end
local fields = redis.call('HKEYS', KEYS[1])
for _, field in ipairs(fields) do
  local id = string.match(field, '^(.*):limit$')
  if id and not named[id] and (only == nil or id == only)
      and (only ~= nil or not bought_since(id)) then
    local held = tonumber(redis.call('HGET', KEYS[1], id .. ':held') or 0)
    -- A cancel keeps what the closed cycle left for its late records (0: nothing).
    local left = only and closed_cycle_left(id) or 0
    if held <= 0 then
      redis.call('HDEL', KEYS[1], id .. ':limit', id .. ':used', id .. ':held', id .. ':gone',
        id .. ':cycle', id .. ':bought_at', id .. ':carried', id .. ':closed')
    else
      redis.call('HSET', KEYS[1], id .. ':gone', 1)
      redis.call('HDEL', KEYS[1], id .. ':carried', id .. ':closed')
    end
    if left > 0 then
      redis.call('HSET', KEYS[1], id .. ':closed', int(left))
    end
  end
  -- What a counter cancelled in the cycle that closes kept of the cycle before it (a
  -- run again of the label leaves what the cycle just closed left).
  local kept = string.match(field, '^(.*):closed$')
  if kept and fresh and not named[kept]
      and redis.call('HEXISTS', KEYS[1], kept .. ':limit') == 0 then
    redis.call('HDEL', KEYS[1], field)
  end
  local cancelled = string.match(field, '^(.*):cancelled$')
  if cancelled and not only and tonumber(redis.call('HGET', KEYS[1], field)) <= since then
    redis.call('HDEL', KEYS[1], field)
  end
end
if only then
  return 1
end
return {set, owed}
