-- fee: debit a fee (a counter's recurring charge) with its ledger entry, once per reference.
--
-- KEYS[1] account hash          acct:{b:N}:<account>
-- KEYS[2] ledger stream         ledger:{b:N}
-- KEYS[3] fee result key        fee:{b:N}:<account>:<reference>
-- ARGV[1] amount (micro-units, > 0)
-- ARGV[2] reference (the ledger reference, e.g. "counter:<id>:<cycle>")
-- ARGV[3] seconds to keep the result for a repeated fee
-- ARGV[4] time (epoch milliseconds)
-- ARGV[5] account id
-- ARGV[6] "1": refuse when the available funds do not cover it (a purchase);
--         "0": debit it whatever the balance (a recurring charge becomes debt); what it
--         takes from the funds live calls hold stays theirs to charge ('forced', lib.lua)
--         "2": a refund by hand: refuse unless the account's own money covers it (the
--         balance less what live calls hold and what is committed; the credit limit
--         is not the customer's money), and keep the refusal: this reference is never
--         debited after it was refused
--
-- Returns {"OK", result} or {"DONE", result} (a repeat: nothing debited), result =
-- msgpack {amount, balance, entry}; {"NOACCT"}; {"REJ", reason}.

if redis.call('EXISTS', KEYS[1]) == 0 then
  return {'NOACCT'}
end
local done = redis.call('GET', KEYS[3])
if done == 'REFUSED' then
  return {'REJ', 'insufficient_funds'}
end
if done then
  return {'DONE', done}
end
local amount = tonumber(ARGV[1])
local a = redis.call('HMGET', KEYS[1], 'balance', 'credit_limit', 'reserved', 'committed',
  'forced')
local credit_limit, reserved = tonumber(a[2]), tonumber(a[3])
if ARGV[6] == '1' then
  local available = tonumber(a[1]) + credit_limit - reserved - tonumber(a[4] or 0)
  if available < amount then
    return {'REJ', 'insufficient_funds'}
  end
elseif ARGV[6] == '2' then
  -- Checked here, with the debit, not by the caller beforehand: a call reserving
  -- between the two would be left holding funds the refund took.
  local own = tonumber(a[1]) - reserved - tonumber(a[4] or 0)
  if own < amount then
    -- Kept, so that a second try of this refund (its caller retrying, the billing
    -- worker finishing it) cannot debit one its first caller was told was refused.
    redis.call('SET', KEYS[3], 'REFUSED', 'EX', ARGV[3])
    return {'REJ', 'insufficient_funds'}
  end
end
local balance = redis.call('HINCRBY', KEYS[1], 'balance', int(-amount))
-- A debit that takes funds live calls hold leaves those holds unbacked: what it took
-- from them is 'forced', which the calls' ends may still charge (lib.lua, decision 0049).
local took = unbacked(balance, credit_limit, reserved)
  - unbacked(balance + amount, credit_limit, reserved)
if took > 0 then
  local lack = unbacked(balance, credit_limit, reserved)
  redis.call('HSET', KEYS[1], 'forced', int(math.min(tonumber(a[5] or 0) + took, lack)))
end
lock_below_critical(KEYS[1], balance)
local entry = redis.call('XADD', KEYS[2], '*',
  'kind', 'fee', 'account', ARGV[5], 'amount', int(-amount), 'balance', int(balance),
  'reference', ARGV[2], 'ts', ARGV[4])
local result = cmsgpack.pack({amount = amount, balance = balance, entry = entry})
redis.call('SET', KEYS[3], result, 'EX', ARGV[3])
return {'OK', result}
