-- rekey_field: replace an old-form digest an account hash keeps (its password 'pw', or
-- a card's PIN 'pin') by its new form, keyed by the server's pepper (decision 0054),
-- unless the field changed meanwhile (a new password set, a card dealt a new PIN).
--
-- KEYS[1] account hash          acct:{b:N}:<account>
-- ARGV[1] the field: 'pw' or 'pin'
-- ARGV[2] the old-form digest the field must still hold
-- ARGV[3] its new form
--
-- Returns 1 when replaced, 0 when the field held anything else (or no account).

if redis.call('HGET', KEYS[1], ARGV[1]) == ARGV[2] then
  redis.call('HSET', KEYS[1], ARGV[1], ARGV[3])
  return 1
end
return 0
