-- authorize_with_ref: authorize.lua, and the call's reference written by the same script,
-- on a standalone Redis (decision 0044). On a Redis Cluster the reference lives in the
-- call id's slot, not the account's, so the caller SETs it beside authorize.lua instead.
-- scripts.py puts authorize.lua's body above this as the local function authorize().
--
-- KEYS and ARGV as authorize.lua, each followed by:
-- KEYS[last]     call reference              callref:{b:M}:<call id>
-- ARGV[last - 1] seconds a granted call's reference lives (the call's whole life)
-- ARGV[last]     seconds a refused attempt's reference lives (its retransmissions)
--
-- Returns what authorize.lua returns; a grant whose reference was left to another
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
local refused_ttl = table.remove(ARGV)
local granted_ttl = table.remove(ARGV)
local result = authorize()
if result[1] == 'OK' then
  -- Read only when there is one (a retransmission, a retry after a refusal, a shared
  -- id): the common grant pays one GET for it.
  local prior = redis.call('GET', ref_key)
  if prior and redis.call('TTL', ref_key) > tonumber(refused_ttl)
      and (cmsgpack.unpack(prior).n or '') ~= (cmsgpack.unpack(ARGV[6]).n or '') then
    result[7] = 1
  else
    redis.call('SET', ref_key, ARGV[6], 'EX', granted_ttl)
  end
else
  redis.call('SET', ref_key, ARGV[6], 'EX', refused_ttl, 'NX')
end
return result
