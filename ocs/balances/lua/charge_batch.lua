-- charge_batch: the usage events of one bucket from a usage import, each rated and
-- debited by charge_event (lib.lua) exactly as charge.lua does it, in order; an event
-- that draws on a usage counter (a bundle of seconds) also uses the counter's seconds,
-- as a live call's stop does, once the counter is seen to hold what it was priced with.
--
-- KEYS[1] ledger stream          ledger:{b:N}
-- KEYS[2] the import's refused accounts (a set; kept ARGV[3] seconds)
--                                mediation:{b:N}:<import id>:refused
-- KEYS[3i], KEYS[3i + 1], KEYS[3i + 2] for event i = 1..n: its account hash
--                                acct:{b:N}:<account>, its result key
--                                usage:{b:N}:<account>:<event id> and the key earlier
--                                versions kept it under, stopped:{b:N}:<account>:<event id>
-- KEYS[2 + 3n + j] for the j-th event that names a counter: its account's counters
--                                hash counters:{b:N}:<account>
-- ARGV[1] time (epoch milliseconds)   ARGV[2] seconds to keep each result
-- ARGV[3] seconds to keep the refused accounts
-- ARGV[4 + 7(i-1)] .. ARGV[10 + 7(i-1)] for event i: event id, cost (micro-units),
--                                quantity (seconds for a call), account id, CDR (msgpack,
--                                opaque), "" or the counter it draws on as
--                                "<free>|<start>|<counter id>": the counter's free seconds
--                                the cost was priced with, the seconds a mandatory counter
--                                starts its first cycle with ("0" optional: it applies
--                                only once bought, as authorize.lua has it), and its id;
--                                and when the record's usage took place (epoch ms): an
--                                account expired by then refuses it (account_expired)
--
-- A record is a call that took place: an account's lock or suspension refuses it only as
-- lib.lua's imported_refused has it (never a critical-balance lock; any other only for a
-- record that started at or after the account's 'status_at'), so a debit that locks the
-- account below its critical balance leaves the file's later records charged while
-- funds and credit limit cover them.
--
-- A record made before its account's current counter cycle began ('cycle_from',
-- counter_reset.lua) belongs to a cycle that is closed: it draws only on the seconds that
-- cycle left free. With carryover those are '<id>:carried' (also in the new limit: used
-- as the new cycle's seconds, and taken off '<id>:carried'); without, '<id>:closed',
-- whatever the new cycle has left, taken off '<id>:closed' only (the new cycle's seconds
-- are not touched). A counter cancelled since (gone, or only '<id>:closed' left of it,
-- counter_reset.lua) still gives such a record what its cycle left: it was live then.
-- Only that cycle is kept: a record made before it began ('closed_from') draws on no
-- counter (the tariff), as nothing of its own cycle is left. The importer prices it so.
--
-- Returns a flat list, two items an event: status ("OK", "DONE", "REJ", "CNT") and the
-- result (charge_event's msgpack), the refusal reason, or for "CNT" the counter's free
-- seconds now (-1: it no longer applies): nothing was charged, price it again. Once an
-- account cannot pay an event, its later events in the same import are refused too
-- ("insufficient_funds"), so an account that ran out mid-file is never charged for a
-- later, cheaper row out of order.

local out = {}
local n = (#ARGV - 3) / 7
local counter_key = 2 + 3 * n
-- Whether each account of the batch was refused earlier in the import: asked once.
local refused = {}
for i = 1, n do
  local at = 3 + 7 * (i - 1)
  local account_id = ARGV[at + 4]
  local counter = ARGV[at + 6]
  local status, value
  if refused[account_id] == nil then
    refused[account_id] = redis.call('SISMEMBER', KEYS[2], account_id) == 1
  end
  local counters, admit, used, c, priced, start = nil, nil, 0, nil, nil, nil
  local late = false
  if counter ~= '' then
    counter_key = counter_key + 1
    counters = KEYS[counter_key]
    priced, start, counter = string.match(counter, '^(%d+)|(%d+)|(.*)$')
    priced, start = tonumber(priced), tonumber(start)
    -- The counter's free seconds as authorize.lua reads them; -1 when it does not apply.
    -- For a record made before the cycle began, the seconds its closed cycle left.
    admit = function()
      c = redis.call('HMGET', counters, counter .. ':limit', counter .. ':used',
        counter .. ':held', counter .. ':gone', 'cycle_from', counter .. ':carried',
        counter .. ':closed', 'closed_from')
      local free = -1
      local made = tonumber(ARGV[at + 7])
      late = c[5] ~= false and made < tonumber(c[5])
      if late and c[8] and made < tonumber(c[8]) then
        free = -1  -- two cycles back or more: none of its own is kept, no counter applies
      elseif late then
        -- Whether cancelled since or not: the bundle was live in the record's cycle.
        if c[6] then
          free = tonumber(c[1] or 0) - tonumber(c[2] or 0) - tonumber(c[3] or 0)
          free = math.max(math.min(free, tonumber(c[6])), 0)
        else
          free = math.max(tonumber(c[7] or 0), 0)
        end
      elseif not c[1] then
        if start > 0 then free = start end
      elseif not c[4] then
        free = math.max(tonumber(c[1]) - tonumber(c[2] or 0) - tonumber(c[3] or 0), 0)
      end
      if free ~= priced then
        return 'CNT', free
      end
      used = math.min(free, tonumber(ARGV[at + 3]))
      return nil
    end
  end
  if refused[account_id] then
    status, value = 'REJ', 'insufficient_funds'
  else
    status, value = charge_event(KEYS[3 * i], KEYS[3 * i + 1], KEYS[3 * i + 2], KEYS[1],
      ARGV[at + 1], ARGV[at + 2], ARGV[2], ARGV[at + 5], ARGV[1], ARGV[at + 3], account_id,
      ARGV[at + 7], admit, true)
    if status == 'REJ' and (value == 'insufficient_funds' or value == 'zero_balance') then
      refused[account_id] = true
      redis.call('SADD', KEYS[2], account_id)
      redis.call('EXPIRE', KEYS[2], ARGV[3])
    elseif status == 'OK' and used > 0 then
      if late and not c[6] then
        redis.call('HINCRBY', counters, counter .. ':closed', -used)
      else
        if not c[1] then
          -- A mandatory counter the account had not used yet: its first cycle starts now.
          redis.call('HSET', counters, counter .. ':limit', start, counter .. ':used', 0)
          bought_in_cycle(counters, counter)
        end
        redis.call('HINCRBY', counters, counter .. ':used', used)
        if late then
          redis.call('HINCRBY', counters, counter .. ':carried', -used)
        end
      end
    end
  end
  out[2 * i - 1] = status
  out[2 * i] = value
end
return out
