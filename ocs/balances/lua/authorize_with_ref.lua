-- authorize_with_ref: authorize.lua, and the call's reference written by the same script,
-- on a standalone Redis (decision 0044). On a Redis Cluster the reference lives in the
-- call id's slot, not the account's, so the caller SETs it beside authorize.lua instead
-- and claim_call_ref.lua keeps this script's rules for it there.
-- scripts.py puts authorize.lua's body above this as the local function authorize().
--
-- KEYS and ARGV as authorize.lua, each followed by:
-- KEYS[last]     call reference              callref:{b:M}:<call id>
-- ARGV[last - 1] seconds a granted call's reference lives (the call's whole life)
-- ARGV[last - 1] seconds a refused attempt's reference lives (its retransmissions)
-- ARGV[last]     "1": an HTTP call (a record with no NAS client) may not take an id
--                another account's HTTP call holds; "0": it may (the caller found that
--                call over: a stopped call's reference outlives it)
--
-- Returns what authorize.lua returns, or {"HELD", record} (nothing reserved) for an
-- HTTP call whose id's reference, granted and unexpired, is another account's HTTP
-- call's (decision 0052, addendum): two switches whose call ids collide (Asterisk
-- UNIQUEIDs of two servers) would otherwise take each other's reference, the first
-- call's stop charging the second and the first left to the janitor. Read before the
-- grant, so a refusal reserves nothing; the GET is the one every grant paid for. A
-- grant whose reference was left to another
-- client's call returns a 7th element, 1 (see below). The reference holds ARGV[6], the
-- live-call record, so that a stop naming only the call id finds the account. A grant's
-- reference replaces a refused attempt's, and one of the same NAS client's (a stale
-- one's; decision 0048 keeps one client's calls apart by qualifying their session ids).
-- One another client's granted call holds (a global id, h323-conf-id or SIP Call-ID,
-- that two clients authorized: two gateways of one call, or a hostile client) is left as
-- it is, and the caller writes this call's reference under the id qualified by its
-- client (decision 0052): replacing it made the first client's Stop find no call of its
-- own, and its call was never charged. A refusal's is written only where none is, for
-- the short window: it never replaces a live call's, and a client looping on refused
-- calls cannot grow Redis.
local ref_key = table.remove(KEYS)
local guard_id = table.remove(ARGV)
local refused_ttl = table.remove(ARGV)
local granted_ttl = table.remove(ARGV)
-- Read only when there is one (a retransmission, a retry after a refusal, a shared
-- id): the common call pays one GET for it.
local prior = redis.call('GET', ref_key)
local held = prior and redis.call('TTL', ref_key) > tonumber(refused_ttl)
if held and guard_id == '1' then
  local theirs, mine = cmsgpack.unpack(prior), cmsgpack.unpack(ARGV[6])
  if (mine.n or '') == '' and (theirs.n or '') == '' and theirs.a ~= mine.a then
    return {'HELD', prior}
  end
end
local result = authorize()
if result[1] == 'OK' then
  if held and (cmsgpack.unpack(prior).n or '') ~= (cmsgpack.unpack(ARGV[6]).n or '') then
    result[7] = 1
  else
    redis.call('SET', ref_key, ARGV[6], 'EX', granted_ttl)
  end
else
  redis.call('SET', ref_key, ARGV[6], 'EX', refused_ttl, 'NX')
end
return result
