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
-- A changed critical balance ('critical') is judged at once by lib.lua's rule: a
-- critical-balance lock (lock 'critical') is lifted when the account has none now or its
-- balance is back to it (as topup.lua lifts it); an active account whose balance is below
-- the new one is locked (as a charge locks it, lock_if_below). A status set in the same
-- step is an operator's decision and is left as set.
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
local critical_given, status_given = false, false
for i = 1, #ARGV, 2 do
  if ARGV[i] == 'critical' then
    critical_given = true
  elseif ARGV[i] == 'status' then
    status_given = true
  end
end
if critical_given and not status_given then
  local c = redis.call('HMGET', KEYS[1], 'critical', 'status', 'lock', 'balance')
  local balance = tonumber(c[4])
  if c[3] == 'critical' and (not c[1] or c[1] == '' or balance >= tonumber(c[1])) then
    -- Locked by its critical balance, which no longer holds it: calls may go on.
    redis.call('HSET', KEYS[1], 'status', 'active', 'lock', '')
  else
    lock_if_below(KEYS[1], balance, c[1], c[2])
  end
end
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
