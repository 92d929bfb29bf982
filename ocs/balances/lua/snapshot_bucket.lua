-- snapshot_bucket: one consistent view of a bucket for reconciliation: the balances
-- of its accounts and the ledger entries not yet moved to PostgreSQL, read atomically.
--
-- KEYS[1]    ledger stream    ledger:{b:N}
-- KEYS[2..n] account hashes   acct:{b:N}:<account>
--
-- Returns {last_id, balances, entries}: last_id is the stream's last generated id
-- ("0-0" for no stream), balances one per account key (false when missing), and
-- entries a flat list of id, account, amount for every entry still in the stream.

local last_id = '0-0'
local entries = {}
if redis.call('EXISTS', KEYS[1]) == 1 then
  local info = redis.call('XINFO', 'STREAM', KEYS[1])
  for i = 1, #info, 2 do
    if info[i] == 'last-generated-id' then
      last_id = info[i + 1]
    end
  end
  for _, entry in ipairs(redis.call('XRANGE', KEYS[1], '-', '+')) do
    local fields = entry[2]
    local account, amount
    for i = 1, #fields, 2 do
      if fields[i] == 'account' then account = fields[i + 1] end
      if fields[i] == 'amount' then amount = fields[i + 1] end
    end
    table.insert(entries, entry[1])
    table.insert(entries, account)
    table.insert(entries, amount)
  end
end
local balances = {}
for i = 2, #KEYS do
  balances[i - 1] = redis.call('HGET', KEYS[i], 'balance')
end
return {last_id, balances, entries}
