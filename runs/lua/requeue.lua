-- Give the run back (graceful stop, Redis back after an outage): the attempt does not count, and
-- the next attempt resumes from the checkpoint. ARGV: token
if not holds_lease(ARGV[FIRST_ARG]) then return 0 end
redis.call('DEL', R.lease)
redis.call('HINCRBY', R.record, 'attempts', -1)
redis.call('HSET', R.record, 'status', '"queued"')
wake_workers(R.wake)
return 1
