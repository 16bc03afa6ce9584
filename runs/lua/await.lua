-- The run stops at a human step: the worker lets go of it (no slot is held while it waits), and the
-- story's later runs keep waiting behind it. Waiters (`?wait`) are told.
-- KEYS (after the run keys): arq's retry counter of the job (its arq job ends here).
-- ARGV: token, deadline ms, counted fields, counted (event, data) pairs
if not holds_lease(ARGV[FIRST_ARG]) then return 0 end
local fields, at = counted(FIRST_ARG + 2)
local events = counted(at)
local m = redis.call('HMGET', R.record, unpack(MOVE_FIELDS))
redis.call('DEL', R.lease)
end_arq_job(KEYS[18])
redis.call('HSET', R.record, unpack(fields))
emit_all(events)
redis.call('ZADD', R.awaiting, ARGV[FIRST_ARG + 1], R.member)
redis.call('PUBLISH', R.channel, R.message)
moved(cjson.decode(m[1]), 'awaiting_input', m[2], m[3])
return 1
