-- claim_call_ref: a call's reference on a Redis Cluster, read and written in its own slot
-- (the call id's, not the account's: authorize.lua cannot touch it there), by the rules
-- authorize_with_ref.lua keeps on one Redis (decisions 0044, 0052 and its addendum).
--
-- KEYS[1] call reference              callref:{b:M}:<call id>
-- ARGV[1] the call's packed live-call record
-- ARGV[2] seconds a granted call's reference lives (the call's whole life)
-- ARGV[3] seconds a refused attempt's reference lives (its retransmissions)
-- ARGV[4] "1": an HTTP call (a record with no NAS client) may not take an id another
--         account's HTTP call holds; "0": it may (the caller found that call over)
-- ARGV[5] "1": write the reference (after a grant); "0": only read it (before one)
--
-- Returns {"HELD", record} when the reference, granted (it outlives the refused-attempt
-- window) and unexpired, is another account's HTTP call's and ARGV[1] is an HTTP call's
-- (ARGV[4] "1"): left as it is. Read before the grant, a refusal reserves nothing; after
-- one (two authorizations that both read no reference, and this one's SET NX lost), the
-- caller gives the grant back: the id's other call keeps its reference and its stop.
-- {"CLIENT"} when another NAS client's granted call holds it: left as it is, and the
-- caller writes this call's under the id qualified by its client (decision 0052).
-- Otherwise {"OK"}, the reference written (ARGV[5] "1") for the call's life, replacing a
-- refused attempt's or a stale one's. Atomic, so two grants that each found the id free
-- cannot both take it: the later finds the earlier's reference.
local prior = redis.call('GET', KEYS[1])
if prior and redis.call('TTL', KEYS[1]) > tonumber(ARGV[3]) then
  local theirs, mine = cmsgpack.unpack(prior), cmsgpack.unpack(ARGV[1])
  local their_client, my_client = theirs.n or '', mine.n or ''
  if their_client ~= my_client then
    return {'CLIENT'}
  end
  if ARGV[4] == '1' and my_client == '' and theirs.a ~= mine.a then
    return {'HELD', prior}
  end
end
if ARGV[5] == '1' then
  redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[2])
end
return {'OK'}
