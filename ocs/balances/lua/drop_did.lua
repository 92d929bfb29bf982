-- drop_did: withdraw a number's reference to an account whose take of it did not
-- commit, and to no other: another account's take of the same number may have
-- committed since, and told Redis; that reference stays.
--
-- KEYS[1] number reference     did:{b:N}:<number>
-- ARGV[1] the account whose take failed
--
-- Returns 1 when the number identified that account and no longer does, 0 when it
-- identified none or another.

if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('DEL', KEYS[1])
  return 1
end
return 0
