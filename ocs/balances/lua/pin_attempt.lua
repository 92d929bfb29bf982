-- pin_attempt: count one PIN attempt against a guess counter, or take one back.
--
-- KEYS[1] guess counter         pinfail:{b:N}:<scope>:<caller or NAS>
-- ARGV[1] window (seconds): how long the counter lives from its first attempt
-- ARGV[2] "1" to count an attempt, "-1" to take one back (the PIN was right)
--
-- An attempt is counted before its PIN is looked at, so that guesses sent in parallel
-- are all counted before any is answered; a right PIN takes its attempt back. What
-- stays counted is the wrong PINs of the window, plus the attempts still in flight.
-- Taking back from a counter whose window has passed does nothing (a DECR would
-- leave a counter at -1 that never expires).
-- Returns the count after the change (0 when there was nothing to take back).

if ARGV[2] == '-1' then
  if redis.call('EXISTS', KEYS[1]) == 0 then
    return 0
  end
  return redis.call('DECR', KEYS[1])
end
local count = redis.call('INCR', KEYS[1])
if count == 1 then
  redis.call('EXPIRE', KEYS[1], ARGV[1])
end
return count
