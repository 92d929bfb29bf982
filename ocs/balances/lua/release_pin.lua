-- release_pin: withdraw a PIN from the card it opens, and from no other.
--
-- KEYS[1] PIN reference         pin:{b:N}:<pin digest>
-- ARGV[1] the card's account id
--
-- Returns 1 when the PIN opened that card and no longer does, 0 when it opened none or
-- another (a later batch may have dealt the same PIN: that card keeps it).

if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('DEL', KEYS[1])
  return 1
end
return 0
