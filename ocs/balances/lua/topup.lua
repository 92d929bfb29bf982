-- topup: credit an account and append the ledger entry, once per top-up id.
--
-- KEYS[1] account hash          acct:{b:N}:<account>
-- KEYS[2] ledger stream         ledger:{b:N}
-- KEYS[3] top-up result key     topup:{b:N}:<account>:<top-up id>
-- ARGV[1] amount (micro-units, > 0)
-- ARGV[2] top-up id (the ledger reference)
-- ARGV[3] seconds to keep the result for repeated top-ups
-- ARGV[4] time (epoch milliseconds)
-- ARGV[5] account id
-- ARGV[6] ledger kind ("topup")
-- ARGV[7] "1": refuse an account past its expiry (an operator's top-up); "" or absent:
--         credit it whatever its expiry (a payment's credit, an invoice's credit line:
--         money already billed or paid, which settles the account's debt)
--
-- Returns {"OK", result} or {"DONE", result} (a repeat: nothing credited),
-- result = msgpack {amount, balance, entry}; {"NOACCT"} for an unknown account;
-- {"LIMIT"} when the balance would pass 10^15 micro-units; {"EXPIRED"} when ARGV[7] is
-- "1" and the account's expiry ('expires', epoch s; 0 or absent: never) is at or before
-- ARGV[4]: nothing credited and nothing kept, so the same id credits once it is revived.

if redis.call('EXISTS', KEYS[1]) == 0 then
  return {'NOACCT'}
end
local done = redis.call('GET', KEYS[3])
if done then
  return {'DONE', done}
end
-- An expired account spends nothing (authorize.lua, lib.lua's charge_event): money put
-- on it would be stuck. A repeat of a top-up made before it expired is answered above.
if ARGV[7] == '1' then
  local expires = tonumber(redis.call('HGET', KEYS[1], 'expires') or 0)
  if expires > 0 and tonumber(ARGV[4]) >= expires * 1000 then
    return {'EXPIRED'}
  end
end
-- Lua numbers are doubles: keep every balance far below 2^53 so the scripts'
-- arithmetic stays exact (10^15 micro-units = one thousand million units).
if tonumber(redis.call('HGET', KEYS[1], 'balance')) + tonumber(ARGV[1]) > 1e15 then
  return {'LIMIT'}
end
local balance = redis.call('HINCRBY', KEYS[1], 'balance', ARGV[1])
local lock = redis.call('HMGET', KEYS[1], 'lock', 'critical', 'forced', 'credit_limit', 'reserved')
-- Funds back behind the holds: forced debits no longer leave them unbacked (lib.lua).
keep_forced_within(KEYS[1], tonumber(lock[3] or 0), balance, tonumber(lock[4]),
  tonumber(lock[5]))
if lock[1] == 'critical' and (not lock[2] or lock[2] == '' or balance >= tonumber(lock[2])) then
  -- Locked by its critical balance, now back to it: calls may go on.
  redis.call('HSET', KEYS[1], 'status', 'active', 'lock', '')
end
local entry = redis.call('XADD', KEYS[2], '*',
  'kind', ARGV[6], 'account', ARGV[5], 'amount', ARGV[1], 'balance', int(balance),
  'reference', ARGV[2], 'ts', ARGV[4])
local result = cmsgpack.pack({amount = tonumber(ARGV[1]), balance = balance, entry = entry})
redis.call('SET', KEYS[3], result, 'EX', ARGV[3])
return {'OK', result}
