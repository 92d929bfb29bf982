-- lib: helpers prepended to every script (scripts.py), so each rule lives once.

-- Lua 5.1 prints large numbers as %.14g ("1e+14"); pass integers as exact strings.
local function int(x) return string.format('%d', x) end

-- Critical balance: a charge that takes an active account's balance below its
-- critical balance locks it (new calls refused, live calls go on); only a top-up
-- back to it or above unlocks it ("lock" = "critical" tells it from an operator's lock).
local function lock_below_critical(account_key, balance)
  local c = redis.call('HMGET', account_key, 'critical', 'status')
  if c[1] and c[1] ~= '' and c[2] == 'active' and balance < tonumber(c[1]) then
    redis.call('HSET', account_key, 'status', 'locked', 'lock', 'critical')
  end
end

