-- charge: rate-and-debit a usage event (MB, kWh, messages) at once, once per event id.
--
-- KEYS[1] account hash          acct:{b:N}:<account>
-- KEYS[2] event result key      stopped:{b:N}:<account>:<event id>
-- KEYS[3] ledger stream         ledger:{b:N}
-- ARGV[1] event id              ARGV[2] cost (micro-units, from the shared rating function)
-- ARGV[3] seconds to keep the result for a repeated event
-- ARGV[4] CDR (msgpack, opaque)  ARGV[5] time (epoch milliseconds)
-- ARGV[6] quantity               ARGV[7] account id
--
-- Returns {"OK", result} or {"DONE", result} (a repeat: nothing charged), result =
-- msgpack {charged, rated, balance, duration, entry, cause}; {"REJ", reason} when the
-- account is unknown, not active, or cannot pay it (balance never below -credit_limit).

if redis.call('EXISTS', KEYS[1]) == 0 then
  return {'REJ', 'account_not_found'}
end
local done = redis.call('GET', KEYS[2])
if done then
  return {'DONE', done}
end
local a = redis.call('HMGET', KEYS[1], 'status', 'balance', 'credit_limit', 'reserved',
  'committed')
if a[1] ~= 'active' then
  return {'REJ', 'account_' .. a[1]}
end
local rated = tonumber(ARGV[2])
-- Funds committed to the plan's prorated charges are not for usage (as in authorize).
local available = tonumber(a[2]) + tonumber(a[3]) - tonumber(a[4]) - tonumber(a[5] or 0)
if rated > available then
  if available <= 0 then
    return {'REJ', 'zero_balance'}
  end
  return {'REJ', 'insufficient_funds'}
end
local balance = redis.call('HINCRBY', KEYS[1], 'balance', int(-rated))
lock_below_critical(KEYS[1], balance)
local entry = redis.call('XADD', KEYS[3], '*',
  'kind', 'usage', 'account', ARGV[7], 'amount', int(-rated), 'balance', int(balance),
  'reference', ARGV[1], 'ts', ARGV[5], 'rated', int(rated), 'charged', int(rated),
  'duration', ARGV[6], 'cause', 'usage', 'cdr', ARGV[4])
local result = cmsgpack.pack({charged = rated, rated = rated, balance = balance,
  duration = tonumber(ARGV[6]), entry = entry, cause = 'usage'})
redis.call('SET', KEYS[2], result, 'EX', ARGV[3])
return {'OK', result}
