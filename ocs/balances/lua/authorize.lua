-- authorize: take a line and reserve funds for a new call, atomically on one account.
--
-- KEYS[1] account hash          acct:{b:N}:<account>
-- KEYS[2] live-calls hash       calls:{b:N}:<account>   (its length = lines in use)
-- KEYS[3] expiry sorted set     expiry:{b:N}
-- KEYS[4] stopped-call key      stopped:{b:N}:<account>:<call id>
-- KEYS[5] IVR override          ivracct:{b:N}:<account>  (returned with a grant)
-- ARGV[1]  call id
-- ARGV[2]  plan id the caller rated against; must equal the account's plan
-- ARGV[3]  cost of the first block (micro-units): the least a call can cost
-- ARGV[4]  minimum available funds the plan requires to start a call
-- ARGV[5]  cost of the plan's longest allowed call: the most a reservation holds
-- ARGV[6]  live-call record (msgpack, opaque to this script)
-- ARGV[7]  expiry (epoch seconds) of the live call
-- ARGV[8]  expiry set member ("<account>\0<call id>")
-- ARGV[9]  the password check: "" skips it (trusted channel); else "<digest> <limit>
--          <window>": the digest must equal the account's when the account has one,
--          and wrong ones are counted, `limit` in a window of `window` seconds
--          (lib.lua's password_refusal, decision 0045); "-" as digest equals none
-- ARGV[10] now (epoch seconds), for the account's expiry date and its password window
-- ARGV[11] start time (epoch seconds) of the call, 0 when a Start is still to come, or
--          "0<now>": a provisional start, the authorization's second, until the switch
--          reports the answer (an HTTP call, decision 0055)
-- ARGV[12] member placing or taking the call ("" none): its own line limit applies
-- ARGV[13] usage counters covering the destination, comma-separated, in order of
--          preference ("" none); the first that applies to the account and has seconds
--          free is used, else the first that applies (with none)
-- ARGV[14] counter seconds the caller priced the reservation with
-- ARGV[15] longest call (seconds): the most counter seconds one call may hold
-- ARGV[16] per candidate, comma-separated: "1" to refuse once it is used up
--          (reject on threshold), else "0"
-- ARGV[17] per candidate, comma-separated: the seconds of a mandatory counter's cycle,
--          to start it on first use; "0" for an optional one, which applies only
--          once bought (its fields exist) and not after it was cancelled ("gone")
-- ARGV[18] the counter the caller priced with ("" none)
-- KEYS[6] member-lines hash     mlines:{b:N}:<account>
-- KEYS[7] counters hash         counters:{b:N}:<account>
-- ARGV[19] "1": the plan's reservation policy is "share": a call holds at most the
--          available funds divided by the account's free lines (this call's included),
--          and never less than its first block
-- ARGV[12..19] and KEYS[6..7] may be left out, together, for a call with no member, no
-- counter and no share (most calls): fewer bytes on the hot path.
--
-- Available funds are balance + credit_limit - reserved - committed (funds kept for
-- the plan's upcoming recurring charges). A call whose longest duration costs
-- nothing (a free destination, or one a counter covers whole) needs no funds.
-- A card with expire_days and no expiry yet is activated: its expiry is set from
-- this first use.
--
-- Returns one of
--   {"OK", reserved, available_before, balance, credit_limit, ivr_override}
--   {"DUP", "<entry>", available_now, credit_limit, ivr_override}
--                             the call id is already live: its entry (see below)
--   {"DONE"}                  the call id was already stopped
--   {"PLAN", actual_plan}     rate again with the account's real plan
--   {"REJ", reason}
--   {"REJ", "funds_held_by_live_calls", live_calls}
--                             refused for want of funds that live calls of the account
--                             hold: without their holds it would have been granted
--   {"REJ", "invalid_password" | "password_blocked", wrong passwords in the window}
--   {"OLDPW"}                 the account's password digest is in the old form (before
--                             decision 0054) and ARGV[9]'s is not it: check the password
--                             with check_password.lua, then authorize again
--   {"CNT", seconds, counter} the counter that applies and its free seconds are not
--                             ARGV[18] and ARGV[14]: price again with them
-- ivr_override is the account's packed IVR override (nil: none), for the answer's IVR
-- attributes: read here, it costs the answer no command of its own.
-- A live-calls entry is "<held>|<started>|<used>|<debited>|<record>": funds still
-- held, start time (0 = not started; "0<second>" a provisional start, "00<second>" the
-- same once a repeat was granted, see below), last reported seconds, amount debited so far.
-- A reservation is min(available, ARGV[5]) (with share, also at most available / free
-- lines, yet at least the first block); the caller turns it into the longest duration
-- it pays for with the shared rating function. With the slice policy the caller passes
-- the cost of one slice as ARGV[5] (quota mode).

-- One read of the account: every account hash has a status, so none means no account.
local a = redis.call('HMGET', KEYS[1], 'status', 'plan', 'balance', 'credit_limit', 'reserved',
  'max_lines', 'pw', 'expires', 'min_balance', 'committed', 'member_lines', 'expire_days',
  'pwfails', 'pwfail_until')
if not a[1] then
  return {'REJ', 'account_not_found'}
end
if a[2] ~= ARGV[2] then
  return {'PLAN', a[2]}
end
-- The password comes before anything that would tell a stranger about the account.
if ARGV[9] ~= '' and a[7] and a[7] ~= '' then
  local given, limit, window = string.match(ARGV[9], '^(%S+) (%d+) (%d+)$')
  if given ~= a[7] and given ~= '-' and old_form_digest(a[7]) then
    -- Stored before decision 0054: only the old form of the password can be compared.
    -- Nothing is counted: the caller checks it by check_password.lua, which re-keys it.
    return {'OLDPW'}
  end
  local reason, counted = password_refusal(KEYS[1], a[7], given, a[13], a[14],
    tonumber(ARGV[10]), tonumber(limit), tonumber(window))
  if reason then
    return {'REJ', reason, counted}
  end
end
if a[1] ~= 'active' then
  -- An on-demand account (call shops, hotels) is locked while no billing session is
  -- open on it: its own reason, read only then, so the common path pays nothing for it.
  if a[1] == 'locked' and redis.call('HGET', KEYS[1], 'lock') == 'session' then
    return {'REJ', 'no_open_session'}
  end
  return {'REJ', 'account_' .. a[1]}
end
if a[8] and tonumber(a[8]) > 0 and tonumber(ARGV[10]) >= tonumber(a[8]) then
  return {'REJ', 'account_expired'}
end
local existing = redis.call('HGET', KEYS[2], ARGV[1])
if existing then
  -- A repeat granted while the call's start is provisional: marked ("00<second>"), so that
  -- the release of an authorization answered with an error (release_unconfirmed.lua)
  -- leaves the call to the switch this repeat answers (decision 0055).
  local held, second, rest = string.match(existing, '^(%d+)|0([1-9]%d*)|(.*)$')
  if held then
    existing = held .. '|00' .. second .. '|' .. rest
    redis.call('HSET', KEYS[2], ARGV[1], existing)
  end
  local available_now = tonumber(a[3]) + tonumber(a[4]) - tonumber(a[5]) - tonumber(a[10] or 0)
  return {'DUP', existing, available_now, tonumber(a[4]), redis.call('GET', KEYS[5])}
end
if redis.call('EXISTS', KEYS[4]) == 1 then
  return {'DONE'}
end
if redis.call('HLEN', KEYS[2]) >= tonumber(a[6]) then
  return {'REJ', 'no_free_line'}
end
local member = ARGV[12] or ''
if member ~= '' then
  local limit = tonumber(redis.call('HGET', KEYS[1], 'ml:' .. member) or a[11] or 0)
  if limit > 0 and tonumber(redis.call('HGET', KEYS[6], member) or 0) >= limit then
    return {'REJ', 'no_free_line'}
  end
end
local counter = ''
local counter_seconds = 0
if (ARGV[13] or '') ~= '' then
  local rejects, mandatory = {}, {}
  for flag in string.gmatch(ARGV[16], '[^,]+') do rejects[#rejects + 1] = flag end
  for seconds in string.gmatch(ARGV[17], '[^,]+') do mandatory[#mandatory + 1] = seconds end
  local n = 0
  -- Of the counters that apply, the first with seconds free (an add-on bought beside a
  -- used-up bundle applies); when none has any, the first that applies: the call draws
  -- nothing on it, and is refused if it refuses once used up (counter_rules.py's
  -- counter_to_draw chooses alike, decision 0008's addendum of 2026-12-07).
  local spent, spent_rejects = nil, false
  for candidate in string.gmatch(ARGV[13], '[^,]+') do
    n = n + 1
    local c = redis.call('HMGET', KEYS[7], candidate .. ':limit', candidate .. ':used',
      candidate .. ':held', candidate .. ':gone')
    if not c[1] and mandatory[n] ~= '0' then
      -- A mandatory counter the account has not used yet: its first cycle starts now.
      redis.call('HSET', KEYS[7], candidate .. ':limit', mandatory[n], candidate .. ':used', 0)
      bought_in_cycle(KEYS[7], candidate)
      c = {mandatory[n], 0, 0, false}
    end
    if c[1] and not c[4] then
      local free = tonumber(c[1]) - tonumber(c[2] or 0) - tonumber(c[3] or 0)
      free = math.max(math.min(free, tonumber(ARGV[15])), 0)
      if free > 0 then
        counter = candidate
        counter_seconds = free
        break
      end
      if not spent then
        spent, spent_rejects = candidate, rejects[n] == '1'
      end
    end
  end
  if counter == '' and spent then
    if spent_rejects then
      return {'REJ', 'counter_exhausted'}
    end
    counter = spent
  end
end
if counter ~= (ARGV[18] or '') or counter_seconds ~= tonumber(ARGV[14] or 0) then
  return {'CNT', counter_seconds, counter}
end
local balance = tonumber(a[3])
local credit_limit = tonumber(a[4])
local available = balance + credit_limit - tonumber(a[5]) - tonumber(a[10] or 0)
local reserve = tonumber(ARGV[5])
local first_block = tonumber(ARGV[3])
-- Why funds of `free` would not do for this call, or nil when they would.
local function short_of(free)
  -- A first block the counter covers costs nothing: such a call needs no funds to
  -- start, only the minimum balance, and what it holds pays for what follows.
  if first_block > 0 and free <= 0 then
    if credit_limit > 0 then
      return 'credit_limit_reached'
    end
    return 'zero_balance'
  end
  if free < tonumber(a[9] or ARGV[4]) then
    return 'below_minimum_balance'
  end
  if free < first_block then
    return 'insufficient_funds'
  end
  return nil
end
if reserve > 0 then
  local reason = short_of(available)
  if reason then
    local held = tonumber(a[5])
    local live = redis.call('HLEN', KEYS[2])
    if held > 0 and live > 0 and not short_of(available + held) then
      -- Only the live calls' holds stand in the way: say so, not "no funds".
      return {'REJ', 'funds_held_by_live_calls', live}
    end
    return {'REJ', reason}
  end
  if (ARGV[19] or '') == '1' then
    -- Share: leave the account's other free lines their part of what is available.
    local free_lines = math.max(tonumber(a[6]) - redis.call('HLEN', KEYS[2]), 1)
    reserve = math.min(reserve, math.max(math.floor(available / free_lines), first_block))
  end
  reserve = math.max(math.min(reserve, available), 0)
end
if tonumber(a[12] or 0) > 0 and tonumber(a[8] or 0) == 0 then
  redis.call('HSET', KEYS[1], 'expires', int(tonumber(ARGV[10]) + tonumber(a[12]) * 86400),
    'first_use', ARGV[10])
end
if member ~= '' then
  redis.call('HINCRBY', KEYS[6], member, 1)
end
if counter_seconds > 0 then
  redis.call('HINCRBY', KEYS[7], counter .. ':held', counter_seconds)
end
redis.call('HINCRBY', KEYS[1], 'reserved', int(reserve))
redis.call('HSET', KEYS[2], ARGV[1], int(reserve) .. '|' .. ARGV[11] .. '|0|0|' .. ARGV[6])
redis.call('ZADD', KEYS[3], ARGV[7], ARGV[8])
return {'OK', reserve, available, balance, credit_limit, redis.call('GET', KEYS[5])}
