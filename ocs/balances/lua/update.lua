-- update: record a live call's progress (Interim-Update) and, when asked, debit
-- what it has used so far, with its ledger entry; idempotent for a repeated report.
--
-- KEYS[1] account hash          acct:{b:N}:<account>
-- KEYS[2] live-calls hash       calls:{b:N}:<account>
-- KEYS[3] expiry sorted set     expiry:{b:N}
-- KEYS[4] stopped-call key      stopped:{b:N}:<account>:<call id>
-- KEYS[5] ledger stream         ledger:{b:N}
-- ARGV[1] call id
-- ARGV[2] seconds used so far
-- ARGV[3] rated cost of those seconds (micro-units), from the shared rating function
-- ARGV[4] "1" to debit the used amount now, "0" to only record progress
-- ARGV[5] time (epoch milliseconds)
-- ARGV[6] account id
-- ARGV[7] new expiry (epoch seconds)
-- ARGV[8] expiry set member
-- ARGV[9] quota mode: the cost (micro-units) the call's funds must cover after this
--         report, i.e. of the used seconds plus the next slice; "" for no new slice.
--         The call's hold grows towards it as far as the free funds allow, and not at
--         all while the account is not active (a critical-balance lock aside) or has
--         expired (ARGV[5] at or past its 'expires'): the call keeps what it holds.
-- ARGV[10] "1": a call already started keeps its expiry (its grant does not change);
--          ARGV[7] then applies only to a call this report shows started (no Start came).
--          "" or "0": ARGV[7] applies.
-- ARGV[11] (optional) the stamp of the call record the caller priced the report with
--          (CallRecord.stamp): the call must be that record's, not a later call of the
--          account that reuses the id (a worker's cached record of an earlier call)
--
-- Returns {"OK", used, debited, held, started_now, started}, {"DONE"} or {"NOCALL"};
-- started_now is 1 when this report is the first sign the call started (its start was
-- still to come, or provisional: "0<second>", decision 0055); started is the call's
-- start as the entry now holds it (the answer; this report's when started_now), the one
-- the switch is answered, the same for every report of the call; {"ENTRY",
-- entry} when the live call is not the record ARGV[11] stamps (nothing changed).
-- Money moves from the call's reservation to the debit: the funds held for the
-- call shrink by what is debited, so available funds never count it twice.

if redis.call('EXISTS', KEYS[4]) == 1 then
  return {'DONE'}
end
local live = redis.call('HGET', KEYS[2], ARGV[1])
if not live then
  return {'NOCALL'}
end
if ARGV[11] and not string.find(live, ARGV[11], 1, true) then
  return {'ENTRY', live}
end
local held, started, used, debited, record = string.match(live,
  '^(%d+)|(%d+)|(%d+)|(%d+)|(.*)$')
held = tonumber(held)
used = math.max(tonumber(used), tonumber(ARGV[2]))
debited = tonumber(debited)
local started_now = 0
if string.sub(started, 1, 1) == '0' then
  started = int(math.floor(tonumber(ARGV[5]) / 1000) - tonumber(ARGV[2]))
  started_now = 1
end
if ARGV[4] == '1' and tonumber(ARGV[3]) > debited then
  local a = redis.call('HMGET', KEYS[1], 'balance', 'credit_limit', 'reserved', 'forced')
  local credit_limit, reserved, forced = tonumber(a[2]), tonumber(a[3]), tonumber(a[4] or 0)
  local headroom = math.max(tonumber(a[1]) + credit_limit - (reserved - held), 0)
  if forced > 0 then
    -- Its hold, as far as a forced debit took it (lib.lua): still the call's to debit.
    headroom = headroom + math.min(held, forced, unbacked(tonumber(a[1]), credit_limit, reserved))
  end
  local delta = math.min(tonumber(ARGV[3]) - debited, headroom)
  if delta > 0 then
    local take = math.min(delta, held)
    redis.call('HINCRBY', KEYS[1], 'reserved', int(-take))
    held = held - take
    local balance = redis.call('HINCRBY', KEYS[1], 'balance', int(-delta))
    spend_forced(KEYS[1], forced, tonumber(a[1]), balance, credit_limit, reserved - take)
    lock_below_critical(KEYS[1], balance)
    debited = debited + delta
    redis.call('XADD', KEYS[5], '*', 'kind', 'interim', 'account', ARGV[6],
      'amount', int(-delta), 'balance', int(balance), 'reference', ARGV[1], 'ts', ARGV[5])
  end
end
if ARGV[9] ~= '' and tonumber(ARGV[9]) > held + debited then
  local a = redis.call('HMGET', KEYS[1], 'balance', 'credit_limit', 'reserved', 'committed',
    'status', 'lock', 'expires')
  local free = tonumber(a[1]) + tonumber(a[2]) - tonumber(a[3]) - tonumber(a[4] or 0)
  -- An account that may not start a call may not extend one either: suspended, locked
  -- (by an operator, or on demand with no session open) or expired since the grant, it
  -- gets no new slice, and the call ends at what it holds, as one the funds cannot
  -- extend. A critical-balance lock refuses only new calls: live calls go on.
  local expires = tonumber(a[7] or 0)
  if (a[5] ~= 'active' and not (a[5] == 'locked' and a[6] == 'critical'))
      or (expires > 0 and tonumber(ARGV[5]) >= expires * 1000) then
    free = 0
  end
  local extra = math.min(tonumber(ARGV[9]) - held - debited, math.max(free, 0))
  if extra > 0 then
    redis.call('HINCRBY', KEYS[1], 'reserved', int(extra))
    held = held + extra
  end
end
redis.call('HSET', KEYS[2], ARGV[1],
  int(held) .. '|' .. started .. '|' .. int(used) .. '|' .. int(debited) .. '|' .. record)
if (ARGV[10] or '') ~= '1' or started_now == 1 then
  redis.call('ZADD', KEYS[3], ARGV[7], ARGV[8])
end
return {'OK', used, debited, held, started_now, tonumber(started)}
