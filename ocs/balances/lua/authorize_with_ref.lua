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
-- Returns what authorize.lua returns. The reference holds ARGV[6], the live-call record,
-- so that a stop naming only the call id finds the account. A grant's reference replaces
-- any other (a refused attempt's, a stale one's). A refusal's is written only where none
-- is, for the short window: it never replaces a live call's, and a client looping on
-- refused calls cannot grow Redis.
local ref_key = table.remove(KEYS)
local refused_ttl = table.remove(ARGV)
local granted_ttl = table.remove(ARGV)
local result = authorize()
if result[1] == 'OK' then
  redis.call('SET', ref_key, ARGV[6], 'EX', granted_ttl)
else
  redis.call('SET', ref_key, ARGV[6], 'EX', refused_ttl, 'NX')
end
return result
