-- create_account: the real-time state of a new account, with its opening balance.
--
-- KEYS[1] account hash          acct:{b:N}:<account>
-- KEYS[2] ledger stream         ledger:{b:N}
-- ARGV[1] plan id   ARGV[2] currency   ARGV[3] credit limit (micro-units)
-- ARGV[4] max lines ARGV[5] status     ARGV[6] opening balance (micro-units, >= 0)
-- ARGV[7] time (epoch milliseconds)    ARGV[8] account id
-- ARGV[9] password digest ("" = none)  ARGV[10] expiry (epoch seconds, 0 = never)
-- ARGV[11] minimum balance to call     ARGV[12] critical balance ("" = none)
-- ARGV[13] funds committed to recurring charges
-- ARGV[14] lines per member (0 = no limit of its own)
-- ARGV[15] days a card lasts after its first use (0 = no such expiry)
-- ARGV[16] the creating request's token ("" = none: no retry takes the account over)
-- ARGV[17] a card's PIN digest ("" = none)
-- ARGV[18] the lock reason ("" = none; "session": an on-demand account with no session open)
--
-- Returns {"OK", balance}; {"SAME", balance, pin digest} when the account exists already,
-- made by a request with the same token (a retry of a creation PostgreSQL never
-- recorded: its caller finishes it, the account untouched); else {"EXISTS"}.
-- A non-zero opening balance is a ledger entry of kind "opening", so the ledger always
-- sums to the balance. 'created' keeps "<time>:<token>": the token for a retry, the time
-- for `ocs reconcile`, which reports an account PostgreSQL lacks once it is old enough.
-- 'status_at' (ARGV[7]) is when its status began (set_policy.lua keeps it after).

if redis.call('EXISTS', KEYS[1]) == 1 then
  local made = redis.call('HMGET', KEYS[1], 'created', 'balance', 'pin')
  if ARGV[16] ~= '' and made[1] and string.match(made[1], '^%d+:(.*)$') == ARGV[16] then
    return {'SAME', made[2], made[3] or ''}
  end
  return {'EXISTS'}
end
redis.call('HSET', KEYS[1], 'plan', ARGV[1], 'currency', ARGV[2], 'credit_limit', ARGV[3],
  'max_lines', ARGV[4], 'status', ARGV[5], 'balance', 0, 'reserved', 0, 'pw', ARGV[9],
  'expires', ARGV[10], 'min_balance', ARGV[11], 'critical', ARGV[12], 'committed', ARGV[13],
  'member_lines', ARGV[14], 'expire_days', ARGV[15], 'lock', ARGV[18] or '',
  'created', ARGV[7] .. ':' .. ARGV[16], 'status_at', ARGV[7])
if ARGV[17] ~= '' then
  redis.call('HSET', KEYS[1], 'pin', ARGV[17])
end
local balance = 0
if tonumber(ARGV[6]) > 0 then
  balance = redis.call('HINCRBY', KEYS[1], 'balance', ARGV[6])
  redis.call('XADD', KEYS[2], '*', 'kind', 'opening', 'account', ARGV[8], 'amount', ARGV[6],
    'balance', int(balance), 'reference', 'opening', 'ts', ARGV[7])
end
return {'OK', balance}
