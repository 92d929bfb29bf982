-- charge_batch: the usage events of one bucket from a usage import, each rated and
-- debited by charge_event (lib.lua) exactly as charge.lua does it, in order.
--
-- KEYS[1] ledger stream          ledger:{b:N}
-- KEYS[2] the import's refused accounts (a set; kept ARGV[3] seconds)
--                                mediation:{b:N}:<import id>:refused
-- KEYS[1 + 2i], KEYS[2 + 2i] for event i = 1..n: its account hash acct:{b:N}:<account>
--                                and its result key stopped:{b:N}:<account>:<event id>
-- ARGV[1] time (epoch milliseconds)   ARGV[2] seconds to keep each result
-- ARGV[3] seconds to keep the refused accounts
-- ARGV[4 + 5(i-1)] .. ARGV[8 + 5(i-1)] for event i: event id, cost (micro-units),
--                                quantity, account id, CDR (msgpack, opaque)
--
-- Returns a flat list, two items an event: status ("OK", "DONE", "REJ") and the result
-- (charge_event's msgpack) or the refusal reason. Once an account cannot pay an event,
-- its later events in the same import are refused too ("insufficient_funds"), so an
-- account that ran out mid-file is never charged for a later, cheaper row out of order.

local out = {}
local n = (#KEYS - 2) / 2
-- Whether each account of the batch was refused earlier in the import: asked once.
local refused = {}
for i = 1, n do
  local at = 3 + 5 * (i - 1)
  local account_id = ARGV[at + 4]
  local status, value
  if refused[account_id] == nil then
    refused[account_id] = redis.call('SISMEMBER', KEYS[2], account_id) == 1
  end
  if refused[account_id] then
    status, value = 'REJ', 'insufficient_funds'
  else
    status, value = charge_event(KEYS[1 + 2 * i], KEYS[2 + 2 * i], KEYS[1], ARGV[at + 1],
      ARGV[at + 2], ARGV[2], ARGV[at + 5], ARGV[1], ARGV[at + 3], account_id)
    if status == 'REJ' and (value == 'insufficient_funds' or value == 'zero_balance') then
      refused[account_id] = true
      redis.call('SADD', KEYS[2], account_id)
      redis.call('EXPIRE', KEYS[2], ARGV[3])
    end
  end
  out[2 * i - 1] = status
  out[2 * i] = value
end
return out
