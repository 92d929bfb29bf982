-- stop: charge a live call, release its reservation and line, and append its
-- CDR and ledger entry to the bucket's ledger stream, all atomically.
--
-- KEYS[1] account hash          acct:{b:N}:<account>
-- KEYS[2] live-calls hash       calls:{b:N}:<account>
-- KEYS[3] expiry sorted set     expiry:{b:N}
-- KEYS[4] stopped-call key      stopped:{b:N}:<account>:<call id>
-- KEYS[5] ledger stream         ledger:{b:N}
-- ARGV[1]  call id
-- ARGV[2]  rated cost of the whole call (micro-units), from the shared rating function
-- ARGV[3]  expiry set member
-- ARGV[4]  seconds to keep the result for repeated stops
-- ARGV[5]  CDR (msgpack, opaque to this script)
-- ARGV[6]  time of the stop (epoch milliseconds)
-- ARGV[7]  duration (seconds)
-- ARGV[8]  account id
-- ARGV[9]  termination cause ("normal", "start-timeout", "expired", "nas-reboot", ...)
-- ARGV[10] "" for a stop reported by the switch; for the janitor, an epoch second:
--          the call is closed only if its expiry is not later than that (a Start or
--          an Interim-Update that extended it meanwhile wins)
-- ARGV[11] member of the call ("" none): its line is released
-- ARGV[12] usage counter of the call ("" none)
-- ARGV[13] counter seconds the call holds
-- ARGV[14] counter seconds the call used (<= ARGV[13]): they count as used
-- ARGV[15] a late stop's: the duration of the close its CDR (ARGV[5]) was built against
-- KEYS[6] member-lines hash     mlines:{b:N}:<account>
-- KEYS[7] counters hash         counters:{b:N}:<account>
-- ARGV[11..15] and KEYS[6..7] may be left out, together, for a call with no member and
-- no counter (ARGV[15] alone may be left out).
--
-- A stop reported for a call ocs closed by policy ("start-timeout", "expired",
-- "nas-reboot", "cut") settles the call at what the report says, once, with cause
-- "late-stop": it is charged what it adds to that close, or given back what the close
-- charged beyond it (never below the interim debits the close found). The counter
-- seconds it used beyond those the close counted are counted then too (or those short
-- of them given back), as far as the counter still has them free: the close released
-- the call's hold, and other calls may have used those seconds since. When ARGV[2] took
-- more counter seconds as free than that, nothing is changed and {"REPRICE", seconds}
-- answers: the counter seconds the call may count in all; the caller prices the call
-- again with that many (ARGV[14]) and runs this again. The late stop's CDR and ledger
-- entry carry what it changes (seconds, billed seconds, counter seconds, money), so
-- the two rows sum to the call; without ARGV[15], or with another duration than the
-- close's, nothing is changed and {"AMEND", duration of the close, answer of the call
-- (epoch s, 0: never answered)} answers: the caller builds that CDR, prices the call
-- from that answer as the close did (a band-priced call), and runs this again.
-- The ledger entry's 'answered' is the call's start as its live entry held it (epoch s:
-- its answer; its authorization second for a provisional start; 0: never started), where
-- the caller's price placed it on the time bands: its CDR keeps it (cdrs.answered_at),
-- so that re-rating places it there too. A late stop's is the close's.
-- Returns {"OK", result} on the first stop, {"DONE", result} on a repeated one,
-- where result is msgpack {charged, rated, balance, duration, entry, cause, debited,
-- started (the answer, epoch s; 0: never answered), and for a late stop added: what it
-- charged (negative: gave back)};
-- {"NOCALL"} when no such call is live; {"LIVE"} when the janitor's guard failed.
-- Interim debits already taken count towards the charge. The charge never takes
-- the balance below -credit_limit: a call that ran past its grant is charged at
-- most what the account can still pay (charged < rated). Its own hold is the
-- exception, as far as a forced debit took it ('forced', lib.lua, decision 0049).

local done = redis.call('GET', KEYS[4])
if done then
  local first = cmsgpack.unpack(done)
  local closed_by_us = first.cause == 'start-timeout' or first.cause == 'expired'
    or first.cause == 'nas-reboot' or first.cause == 'cut'
  local rated = tonumber(ARGV[2])
  -- What the call comes to now its switch reports it: never less than the interim
  -- debits the close found (a result from before they were kept: what it charged).
  local owed = math.max(rated, tonumber(first.debited or first.charged))
  -- Counter seconds this report uses beyond (or short of) those the close counted.
  local more_seconds = 0
  local counted = 0
  if (ARGV[12] or '') ~= '' and tonumber(ARGV[13]) > 0 then
    counted = math.min(tonumber(first.duration), tonumber(ARGV[13]))
    more_seconds = tonumber(ARGV[14]) - counted
  end
  -- Only a switch's report settles the call: a close by ocs itself (the janitor, a NAS's
  -- restart, a cut, an unconfirmed grant) that finds the call closed is a repeat.
  local by_policy = ARGV[10] ~= '' or ARGV[9] == 'start-timeout' or ARGV[9] == 'expired'
    or ARGV[9] == 'nas-reboot' or ARGV[9] == 'cut' or ARGV[9] == 'unconfirmed'
  if not closed_by_us or by_policy then
    return {'DONE', done}
  end
  if tonumber(ARGV[15] or -1) ~= tonumber(first.duration) then
    -- Its CDR is to carry what the report changes: built against the close's duration,
    -- and priced from the answer the close found (decision 0040), which the caller, with
    -- no live entry to read, does not know yet; so asked before "nothing changes" is
    -- decided, on a price that may have placed the call on the wrong bands.
    return {'AMEND', first.duration, first.started or 0}
  end
  if owed == first.charged and more_seconds == 0 then
    return {'DONE', done}
  end
  local c = nil
  if more_seconds ~= 0 then
    -- What the counter has free now (nothing when a reset or cancel removed it).
    c = redis.call('HMGET', KEYS[7], ARGV[12] .. ':limit', ARGV[12] .. ':used',
      ARGV[12] .. ':held')
    local free = 0
    if c[1] then
      free = math.max(tonumber(c[1]) - tonumber(c[2] or 0) - tonumber(c[3] or 0), 0)
    end
    if more_seconds > free then
      return {'REPRICE', counted + free}
    end
  end
  -- ocs closed this call by policy (never started, expired, NAS restart, cut), yet its
  -- switch reports it after all: charge what the report adds, now, once, as far as the
  -- account can pay (its reservation is gone: the headroom is what is free); or give
  -- back what the close charged beyond it (a shorter call than the policy assumed).
  local charge = owed - first.charged
  if charge > 0 then
    local a = redis.call('HMGET', KEYS[1], 'balance', 'credit_limit', 'reserved')
    local headroom = tonumber(a[1]) + tonumber(a[2]) - tonumber(a[3])
    charge = math.max(math.min(charge, headroom), 0)
  end
  if more_seconds ~= 0 and c[1] then
    -- Never below none used: a reset since the close started the counter afresh.
    redis.call('HSET', KEYS[7], ARGV[12] .. ':used',
      int(math.max(tonumber(c[2] or 0) + more_seconds, 0)))
  end
  local balance = redis.call('HINCRBY', KEYS[1], 'balance', int(-charge))
  if charge > 0 then
    lock_below_critical(KEYS[1], balance)
  end
  -- The CDR (ARGV[5]) and the entry carry what the report changes: seconds, billed
  -- seconds, counter seconds and money; it amends the close's and is not a call.
  local entry = redis.call('XADD', KEYS[5], '*',
    'kind', 'call', 'account', ARGV[8], 'amount', int(-charge), 'balance', int(balance),
    'reference', ARGV[1], 'ts', ARGV[6], 'rated', int(rated), 'charged', int(charge),
    'duration', int(tonumber(ARGV[7]) - tonumber(first.duration)), 'cause', 'late-stop',
    'cdr', ARGV[5], 'answered', int(first.started or 0))
  local result = cmsgpack.pack({charged = first.charged + charge, rated = rated,
    balance = balance, duration = tonumber(ARGV[7]), entry = entry, cause = 'late-stop',
    debited = first.debited, added = charge, started = first.started})
  redis.call('SET', KEYS[4], result, 'EX', ARGV[4])
  return {'OK', result}
end
local live = redis.call('HGET', KEYS[2], ARGV[1])
if not live then
  return {'NOCALL'}
end
if ARGV[10] ~= '' then
  local score = redis.call('ZSCORE', KEYS[3], ARGV[3])
  if score and tonumber(score) > tonumber(ARGV[10]) then
    return {'LIVE'}
  end
end
local held, started, used, debited = string.match(live, '^(%d+)|(%d+)|(%d+)|(%d+)|')
held = tonumber(held)
debited = tonumber(debited)
local a = redis.call('HMGET', KEYS[1], 'balance', 'credit_limit', 'reserved', 'forced')
local credit_limit, reserved, forced = tonumber(a[2]), tonumber(a[3]), tonumber(a[4] or 0)
local headroom = tonumber(a[1]) + credit_limit - (reserved - held)
if forced > 0 then
  -- Its hold, as far as a forced debit took it (lib.lua): still the call's to charge.
  headroom = math.max(headroom, 0)
    + math.min(held, forced, unbacked(tonumber(a[1]), credit_limit, reserved))
end
local rated = tonumber(ARGV[2])
local charge = rated - debited
if charge < 0 then
  charge = 0
end
if charge > headroom then
  charge = math.max(headroom, 0)
end
redis.call('HINCRBY', KEYS[1], 'reserved', int(-held))
local balance = redis.call('HINCRBY', KEYS[1], 'balance', int(-charge))
spend_forced(KEYS[1], forced, tonumber(a[1]), balance, credit_limit, reserved - held)
lock_below_critical(KEYS[1], balance)
redis.call('HDEL', KEYS[2], ARGV[1])
redis.call('ZREM', KEYS[3], ARGV[3])
if (ARGV[11] or '') ~= '' and redis.call('HINCRBY', KEYS[6], ARGV[11], -1) <= 0 then
  redis.call('HDEL', KEYS[6], ARGV[11])
end
if (ARGV[12] or '') ~= '' and tonumber(ARGV[13]) > 0 then
  -- A counter reset may have removed the counter meanwhile: only touch a live one.
  if redis.call('HEXISTS', KEYS[7], ARGV[12] .. ':limit') == 1 then
    local c = ARGV[12]
    local held = redis.call('HINCRBY', KEYS[7], c .. ':held', -tonumber(ARGV[13]))
    redis.call('HINCRBY', KEYS[7], c .. ':used', tonumber(ARGV[14]))
    if held <= 0 and redis.call('HEXISTS', KEYS[7], c .. ':gone') == 1 then
      -- Cancelled while this call held some of it: the last holder removes it (but
      -- not what its closed cycle left, '<id>:closed', which the next reset removes).
      redis.call('HDEL', KEYS[7], c .. ':limit', c .. ':used', c .. ':held', c .. ':gone',
        c .. ':cycle', c .. ':bought_at', c .. ':carried')
    end
  end
end
local charged = debited + charge
local entry = redis.call('XADD', KEYS[5], '*',
  'kind', 'call', 'account', ARGV[8], 'amount', int(-charge), 'balance', int(balance),
  'reference', ARGV[1], 'ts', ARGV[6], 'rated', int(rated), 'charged', int(charged),
  'duration', ARGV[7], 'cause', ARGV[9], 'cdr', ARGV[5], 'answered', int(tonumber(started)))
-- started: the call's answer (epoch s, 0: never started), where a late stop's price
-- places it on the time bands.
local result = cmsgpack.pack({charged = charged, rated = rated, balance = balance,
  duration = tonumber(ARGV[7]), entry = entry, cause = ARGV[9], debited = debited,
  started = tonumber(started)})
redis.call('SET', KEYS[4], result, 'EX', ARGV[4])
return {'OK', result}
