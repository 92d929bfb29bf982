-- release_unconfirmed: give back, free, the line and funds of a grant whose authorization
-- was answered with an error after its script ran (its reply lost, a command after it
-- failed): the switch was told the call was refused (decision 0055). Nothing is charged,
-- and no CDR, ledger entry or stopped result is written: no call took place, and a retry
-- of the authorization is granted afresh.
--
-- KEYS[1] account hash          acct:{b:N}:<account>
-- KEYS[2] live-calls hash       calls:{b:N}:<account>
-- KEYS[3] expiry sorted set     expiry:{b:N}
-- KEYS[4] member-lines hash     mlines:{b:N}:<account>
-- KEYS[5] counters hash         counters:{b:N}:<account>
-- ARGV[1] call id
-- ARGV[2] the stamp of the grant's record (CallRecord.stamp)
-- ARGV[3] expiry set member
-- ARGV[4] member of the call ("" none): its line is released
-- ARGV[5] usage counter of the call ("" none)
-- ARGV[6] counter seconds the call holds
--
-- Returns 1 when the grant was released; 0 when it was left as it is: no call of the id
-- is live, the live call is another grant's (not the stamped record's), or its start is
-- no longer provisional "0<second>": answered (/start, an interim), waiting for a RADIUS
-- Accounting-Start ("0"), or a repeat of its authorization was granted ("00<second>",
-- authorize.lua): that answer may have reached the switch, which now holds the call.

local live = redis.call('HGET', KEYS[2], ARGV[1])
if not live or not string.find(live, ARGV[2], 1, true) then
  return 0
end
local held = string.match(live, '^(%d+)|0[1-9]%d*|')
if not held then
  return 0
end
held = tonumber(held)
local a = redis.call('HMGET', KEYS[1], 'balance', 'credit_limit', 'reserved', 'forced')
local balance = tonumber(a[1])
local reserved = tonumber(a[3]) - held
redis.call('HINCRBY', KEYS[1], 'reserved', int(-held))
-- No charge: 'forced' is only kept within what the remaining holds lack (lib.lua).
spend_forced(KEYS[1], tonumber(a[4] or 0), balance, balance, tonumber(a[2]), reserved)
redis.call('HDEL', KEYS[2], ARGV[1])
redis.call('ZREM', KEYS[3], ARGV[3])
if ARGV[4] ~= '' and redis.call('HINCRBY', KEYS[4], ARGV[4], -1) <= 0 then
  redis.call('HDEL', KEYS[4], ARGV[4])
end
if ARGV[5] ~= '' and tonumber(ARGV[6]) > 0 then
  -- A counter reset may have removed the counter meanwhile: only touch a live one.
  local c = ARGV[5]
  if redis.call('HEXISTS', KEYS[5], c .. ':limit') == 1 then
    local left = redis.call('HINCRBY', KEYS[5], c .. ':held', -tonumber(ARGV[6]))
    if left <= 0 and redis.call('HEXISTS', KEYS[5], c .. ':gone') == 1 then
      -- Cancelled while this call held some of it: the last holder removes it (but
      -- not what its closed cycle left, '<id>:closed', which the next reset removes).
      redis.call('HDEL', KEYS[5], c .. ':limit', c .. ':used', c .. ':held', c .. ':gone',
        c .. ':cycle', c .. ':bought_at', c .. ':carried')
    end
  end
end
return 1
