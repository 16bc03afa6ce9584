-- Give the run back (graceful stop, Redis back after an outage): the attempt does not count, and
-- the next attempt resumes from the checkpoint. ARGV: token
if not holds_lease(ARGV[FIRST_ARG]) then return 0 end
local m = redis.call('HMGET', R.record, unpack(MOVE_FIELDS))
redis.call('DEL', R.lease)
redis.call('HINCRBY', R.record, 'attempts', -1)
redis.call('HSET', R.record, 'status', '"queued"')
wake_workers(R.wake)
moved(cjson.decode(m[1]), 'queued', m[2], m[3])
return 1
