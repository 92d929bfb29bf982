-- stop_live: stop.lua for a call record the caller kept from before (a worker keeps the
-- records of the calls it authorized), which may be an earlier call's of the same id: a
-- call closed by another worker, the janitor, a cut or a NAS's restart, whose id was then
-- granted again. It stops the call only when the account's live call of the id is that
-- record's; else it changes nothing and says so, and the caller finds the current call.
-- scripts.py puts stop.lua's body above this as the local function stop().
--
-- KEYS and ARGV as stop.lua, followed by:
-- ARGV[last] the stamp of the caller's record (CallRecord.stamp: its authorization time
--            as the packed record holds it)
--
-- Returns what stop.lua returns when the live call is that record's (or none is live and
-- none was stopped: {"NOCALL"}); {"ENTRY", entry} when another call of the account holds
-- the id; {"CLOSED"} when the id's call was closed already (its stopped key stands): the
-- caller looks up which call the id names before it charges a late stop or answers a
-- repeat, so that a stop of the id's next call is not taken for either.
local stamp = table.remove(ARGV)
if redis.call('EXISTS', KEYS[4]) == 1 then
  return {'CLOSED'}
end
local live = redis.call('HGET', KEYS[2], ARGV[1])
if live and not string.find(live, stamp, 1, true) then
  return {'ENTRY', live}
end
return stop()
