-- lib: helpers prepended to every script (scripts.py), so each rule lives once.

-- Lua 5.1 prints large numbers as %.14g ("1e+14"); pass integers as exact strings.
local function int(x) return string.format('%d', x) end

-- Redis's clock, in epoch microseconds (exact in a Lua number): what counter purchases
-- and cancels are stamped with, and what a counter reset's run compares them to.
local function now_us()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000000 + tonumber(t[2])
end

-- Stamp a counter started outside a reset (bought, or a mandatory one first used) as
-- bought in the account's current cycle ('cycle', counter_reset.lua): a reset run again
-- for that cycle leaves it as it is and owes no cycle fee for it. Without a current
-- cycle (no reset has run for the account), it carries no label. Its time of purchase
-- ('<id>:bought_at') tells a reset whose run began before it (a run that read the
-- account's counters before the purchase, or a retry of one) to leave it too; a cancel
-- before it ('<id>:cancelled') no longer counts.
local function bought_in_cycle(counters_key, id)
  local current = redis.call('HGET', counters_key, 'cycle')
  if current then
    redis.call('HSET', counters_key, id .. ':cycle', current .. '|bought')
  else
    redis.call('HDEL', counters_key, id .. ':cycle')
  end
  redis.call('HSET', counters_key, id .. ':bought_at', int(now_us()))
  redis.call('HDEL', counters_key, id .. ':cancelled')
end

-- Critical balance: a charge that takes an active account's balance below its
-- critical balance locks it (new calls refused, live calls go on); only a top-up
-- back to it or above unlocks it ("lock" = "critical" tells it from an operator's lock).
-- lock_if_below: the same rule when the caller has read 'critical' and 'status' already.
local function lock_if_below(account_key, balance, critical, status)
  if critical and critical ~= '' and status == 'active' and balance < tonumber(critical) then
    redis.call('HSET', account_key, 'status', 'locked', 'lock', 'critical')
  end
end

local function lock_below_critical(account_key, balance)
  local c = redis.call('HMGET', account_key, 'critical', 'status')
  lock_if_below(account_key, balance, c[1], c[2])
end

-- Forced debits and the funds held for live calls (decision 0049). A debit taken
-- whatever the balance (an invoice, a refund, a counter's cycle fee) may take the funds
-- a live call holds; the call's end would then find nothing to charge it from.
-- 'forced' is how much of the holds such debits left with no funds behind them, and a
-- call's end (or interim debit) may still take its hold from it. A lowered credit
-- limit leaves holds unbacked too, but those a call may not take (the limit is the
-- floor), so 'forced' is kept within what the holds lack now (keep_forced_within).
-- unbacked: the part of ``reserved`` that balance and credit limit do not cover.
local function unbacked(balance, credit_limit, reserved)
  return math.max(reserved - math.max(balance + credit_limit, 0), 0)
end

-- After the balance went up or the credit limit changed: 'forced' (as read before, 0
-- when absent) is cut to what the holds lack now.
local function keep_forced_within(account_key, forced, balance, credit_limit, reserved)
  if forced > 0 then
    local lack = unbacked(balance, credit_limit, reserved)
    if forced > lack then
      redis.call('HSET', account_key, 'forced', int(lack))
    end
  end
end

-- After a call's charge or interim debit took the balance from ``before`` to ``after``
-- and its hold down to ``reserved`` in all: what it took below the floor
-- (-credit_limit) came out of 'forced', which it may take only once; the rest is cut
-- to what the holds lack now.
local function spend_forced(account_key, forced, before, after, credit_limit, reserved)
  if forced > 0 then
    local below = math.max(-(after + credit_limit), 0) - math.max(-(before + credit_limit), 0)
    local left = math.max(math.min(forced - below, unbacked(after, credit_limit, reserved)), 0)
    if left ~= forced then
      redis.call('HSET', account_key, 'forced', int(left))
    end
  end
end


-- Whether an account that is not active refuses an imported usage record (a supplier's
-- file: the call took place, and the supplier bills it whatever ocs answers now).
-- status, lock, status_at: the account's fields (lock and status_at nil when absent);
-- at: the record's start, epoch ms. A lock lets a new call be refused, never a call made:
-- - a critical-balance lock ('locked', lock 'critical') refuses none: real time refuses
--   only new calls under it and still charges a live call's end;
-- - any other lock or a suspension (an operator's, dunning's, the on-demand session
--   lock) refuses a record that started at or after it was set ('status_at', written by
--   set_policy.lua and create_account.lua), as a live call then would have been refused
--   (an expiry is judged the same way); one made before it is charged;
-- - without 'status_at' (a status set before it was kept) when it was set is not known:
--   the record is charged, since the call took place.
-- Funds and expiry rules apply to the record whatever its account's status.
local function imported_refused(status, lock, status_at, at)
  if status == 'locked' and lock == 'critical' then
    return false
  end
  return status_at ~= false and status_at ~= nil and status_at ~= ''
    and tonumber(at) >= tonumber(status_at)
end

-- Rate-and-debit one usage event at once, once per event id: charge.lua runs it for
-- one event, charge_batch.lua for each event of a usage import (issue 15), so a
-- switch's file and the live API debit by the same rule.
-- account_key acct:{b:N}:<account>; result_key usage:{b:N}:<account>:<event id>;
-- legacy_key stopped:{b:N}:<account>:<event id>, where earlier versions kept
-- the result (the key a call's stop uses: an event id equal to a call's id mixed them);
-- ledger_key ledger:{b:N}; rated: cost in micro-units (the shared rating function);
-- ttl: seconds a result is kept to answer a repeat; cdr: msgpack, opaque; ts: epoch ms.
-- at: when the usage took place, epoch ms (ts for a live event; an imported record's own
-- start): an account that had expired by then is refused, as authorize.lua refuses it.
-- admit: nil, or a function the event must pass once it is known to be new and its
-- account able to take it (active, or as imported_refused lets it), before any funds
-- are looked at: it returns nil to go on, or a status and a value to answer instead
-- (charge_batch.lua checks a usage counter with it).
-- imported: true for a supplier's record (charge_batch.lua), nil for a live event; an
-- account that is not active refuses a live event, and an imported record only as
-- imported_refused has it.
-- about: nil, or a table of what the event was rated as (a live event's service, billed
-- quantity, currency and zone), kept in its result: a repeat is answered with what was
-- charged, not what the retry says, even once the tariff is gone.
-- Returns 'OK', result or 'DONE', result (a repeat: nothing charged), result = msgpack
-- {charged, rated, balance, duration, entry, cause, and about's fields}; or 'REJ', reason when the account
-- is unknown, not active (an imported record: imported_refused), expired at ``at``, or
-- cannot pay (the balance never goes below -credit_limit).
local function charge_event(account_key, result_key, legacy_key, ledger_key, event_id,
                            rated, ttl, cdr, ts, quantity, account_id, at, admit, imported,
                            about)
  -- One read of the account: every account hash has a status, so none means no account.
  local a = redis.call('HMGET', account_key, 'status', 'balance', 'credit_limit', 'reserved',
    'committed', 'critical', 'expires', 'expire_days', 'lock', 'status_at')
  if not a[1] then
    return 'REJ', 'account_not_found'
  end
  local done = redis.call('GET', result_key)
  if done then
    return 'DONE', done
  end
  -- A result an earlier version kept (for at most stop_dedupe_ttl) still answers its
  -- repeat; a call's stop result under that key is not this event's.
  local legacy = redis.call('GET', legacy_key)
  if legacy and cmsgpack.unpack(legacy).cause == 'usage' then
    return 'DONE', legacy
  end
  if a[1] ~= 'active' and (not imported or imported_refused(a[1], a[9], a[10], at)) then
    return 'REJ', 'account_' .. a[1]
  end
  -- A card past its life keeps its balance, but spends none of it (authorize.lua's rule).
  -- Judged at the time of the usage: a record of a call made while the card was valid,
  -- imported after it expired, is still charged, as the call took place.
  local expires = tonumber(a[7] or 0)
  if expires > 0 and tonumber(at) >= expires * 1000 then
    return 'REJ', 'account_expired'
  end
  if admit then
    local status, value = admit()
    if status then
      return status, value
    end
  end
  rated = tonumber(rated)
  -- Funds committed to the plan's prorated charges are not for usage (as in authorize).
  local available = tonumber(a[2]) + tonumber(a[3]) - tonumber(a[4]) - tonumber(a[5] or 0)
  -- A free event (an inbound call, one a bundle covers) takes nothing: it is charged
  -- whatever the funds, never refused as if it needed them.
  if rated > 0 and rated > available then
    if available <= 0 then
      return 'REJ', 'zero_balance'
    end
    return 'REJ', 'insufficient_funds'
  end
  local balance = redis.call('HINCRBY', account_key, 'balance', int(-rated))
  lock_if_below(account_key, balance, a[6], a[1])
  -- A card with expire_days and no expiry yet is activated by its first use, a usage
  -- event as a call (authorize.lua's rule): its life runs from the usage's time.
  local expire_days = tonumber(a[8] or 0)
  if expire_days > 0 and expires == 0 then
    local first_use = math.floor(tonumber(at) / 1000)
    redis.call('HSET', account_key, 'expires', int(first_use + expire_days * 86400),
      'first_use', int(first_use))
  end
  local entry = redis.call('XADD', ledger_key, '*',
    'kind', 'usage', 'account', account_id, 'amount', int(-rated), 'balance', int(balance),
    'reference', event_id, 'ts', ts, 'rated', int(rated), 'charged', int(rated),
    'duration', quantity, 'cause', 'usage', 'cdr', cdr)
  local fields = {charged = rated, rated = rated, balance = balance,
    duration = tonumber(quantity), entry = entry, cause = 'usage'}
  for name, value in pairs(about or {}) do
    fields[name] = value
  end
  local result = cmsgpack.pack(fields)
  redis.call('SET', result_key, result, 'EX', ttl)
  return 'OK', result
end

-- Wrong passwords, counted per account (decision 0045): authorize.lua and
-- check_password.lua judge a password by this one rule. The account hash keeps
-- 'pwfails' (wrong passwords in the current window) and 'pwfail_until' (when that
-- window ends, epoch seconds); the first wrong password opens a window of `window`
-- seconds. Once `limit` wrong passwords fall in a window, every password-checked request
-- is refused until it ends, the right password too: otherwise a guesser would still
-- learn which guess is right. A right password before the limit clears the count.
-- stored: the account's digest; given: the digest to check; fails, failed_until: the
-- two fields as read (nil when absent); now: epoch seconds.
-- password_fails_counted: the wrong passwords the current window still counts (0 once
-- it has ended). password_refusal returns nil (the password is right), or a refusal
-- reason and the wrong passwords counted in the window so far.
-- old_form_digest: whether a stored digest is in the form made before decision 0054,
-- not keyed by the server's pepper (a new-form one starts with "p1:"). A password
-- stored so is checked by the caller's old-form digest of it, and replaced by its new
-- form once right (check_password.lua).
local function old_form_digest(stored)
  return string.sub(stored, 1, 3) ~= 'p1:'
end

local function password_fails_counted(fails, failed_until, now)
  if failed_until and tonumber(failed_until) > now then
    return tonumber(fails or 0)
  end
  return 0
end

local function password_refusal(account_key, stored, given, fails, failed_until, now,
                                limit, window)
  local counted = password_fails_counted(fails, failed_until, now)
  if counted >= limit then
    return 'password_blocked', counted
  end
  if given ~= stored then
    if counted > 0 then
      redis.call('HINCRBY', account_key, 'pwfails', 1)
    else
      redis.call('HSET', account_key, 'pwfails', 1, 'pwfail_until', int(now + window))
    end
    return 'invalid_password', counted + 1
  end
  if fails then
    redis.call('HDEL', account_key, 'pwfails', 'pwfail_until')
  end
  return nil
end
