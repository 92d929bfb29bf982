-- discard_card: remove a card of a batch whose creation failed and was never finished
-- (PostgreSQL has neither batch nor card), writing its balance off in the ledger, so
-- that the card's ledger sums to zero and a later batch of the same id starts clean.
-- Its PIN is withdrawn before, by release_pin (another slot).
--
-- KEYS[1] account hash          acct:{b:N}:<card>
-- KEYS[2] live calls hash       calls:{b:N}:<card>
-- KEYS[3] counters hash         counters:{b:N}:<card>
-- KEYS[4] ledger stream         ledger:{b:N}
-- ARGV[1] the card's account id
-- ARGV[2] its 'created' field as read ("<ms>:<token>"): a card made anew since is kept
-- ARGV[3] time (epoch milliseconds)
-- ARGV[4] the ledger entry's reference (discarded:<batch>)
--
-- Returns {"OK", balance written off}; {"GONE"} when no such card is there; {"CHANGED"}
-- when it was made anew since it was read; {"BUSY"} while it holds a call or funds.

if redis.call('EXISTS', KEYS[1]) == 0 then
  return {'GONE'}
end
local card = redis.call('HMGET', KEYS[1], 'created', 'balance', 'reserved')
if card[1] ~= ARGV[2] then
  return {'CHANGED'}
end
if redis.call('HLEN', KEYS[2]) > 0 or tonumber(card[3] or '0') ~= 0 then
  return {'BUSY'}
end
local balance = tonumber(card[2] or '0')
if balance ~= 0 then
  redis.call('XADD', KEYS[4], '*', 'kind', 'discarded', 'account', ARGV[1],
    'amount', int(-balance), 'balance', 0, 'reference', ARGV[4], 'ts', ARGV[3])
end
redis.call('DEL', KEYS[1], KEYS[3])
return {'OK', int(balance)}
