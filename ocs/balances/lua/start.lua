-- start: bind an authorized call to its Accounting-Start; idempotent.
--
-- KEYS[1] live-calls hash       calls:{b:N}:<account>
-- KEYS[2] expiry sorted set     expiry:{b:N}
-- KEYS[3] stopped-call key      stopped:{b:N}:<account>:<call id>
-- ARGV[1] call id
-- ARGV[2] start time (epoch seconds)
-- ARGV[3] new expiry (epoch seconds): the grant plus grace, from the start
-- ARGV[4] expiry set member
-- ARGV[5] (optional) "<held>|<started>|<used>|<debited>": the entry the expiry was
--         computed from (as its authorize wrote it), so that no read comes first; ""
--         for none
-- ARGV[6] (optional) the stamp of the call record the caller holds (CallRecord.stamp):
--         the call must be that record's, not a later call of the account that reuses
--         the id (a worker's cached record of an earlier call, closed elsewhere)
--
-- A provisional start ("0<second>" or "00<second>": an HTTP call's authorization,
-- decision 0055) is not an answer: the first start replaces it, as it sets a "0".
--
-- Returns {"OK", started} (the first start time is kept), {"DONE"} for a call
-- already stopped, {"NOCALL"} for no such live call, {"ENTRY", entry} when the
-- entry is not the one ARGV[5] names or its record not the one ARGV[6] stamps
-- (nothing changed: compute again from it).

if redis.call('EXISTS', KEYS[3]) == 1 then
  return {'DONE'}
end
local live = redis.call('HGET', KEYS[1], ARGV[1])
if not live then
  return {'NOCALL'}
end
if ARGV[6] and not string.find(live, ARGV[6], 1, true) then
  return {'ENTRY', live}
end
local held, started, rest = string.match(live, '^(%d+)|(%d+)|(.*)$')
if string.sub(started, 1, 1) ~= '0' then
  return {'OK', tonumber(started)}
end
local expected = ARGV[5] or ''
if expected ~= '' and string.sub(live, 1, #expected + 1) ~= expected .. '|' then
  return {'ENTRY', live}
end
redis.call('HSET', KEYS[1], ARGV[1], held .. '|' .. ARGV[2] .. '|' .. rest)
redis.call('ZADD', KEYS[2], ARGV[3], ARGV[4])
return {'OK', tonumber(ARGV[2])}
