-- Queue a failed or cancelled run again, behind its story's unfinished runs, to resume from the
-- checkpoint the caller computed. Returns 'queued', 'not_finished' or 'changed' (it moved meanwhile).
-- ARGV: attempts as read, job payload, payload ttl ms, counted fields, counted (event, data) pairs
local a = FIRST_ARG
local m = redis.call('HMGET', R.record, 'status', 'batch_id', 'webhook_url', 'attempts')
if not m[1] then return 'missing' end
local status = cjson.decode(m[1])
if status ~= 'failed' and status ~= 'cancelled' then return 'not_finished' end
if m[4] ~= ARGV[a] then return 'changed' end
local fields, at = counted(a + 3)
local events = counted(at)
redis.call('HSET', R.record, unpack(fields))
redis.call('PERSIST', R.record)
redis.call('PERSIST', R.events)
redis.call('ZREM', R.expiring, R.member)
redis.call('SADD', R.active, R.job_id)
redis.call('ZREM', R.abort, R.job_id)  -- or arq would abort the retried job before it starts
emit_all(events)
if redis.call('RPUSH', R.story_queue, R.job_id) == 1 then
  enqueue(R.arq_job, R.arq_queue, R.wake, R.job_id, ARGV[a + 1], ARGV[a + 2], R.now_ms)
else
  redis.call('PSETEX', R.arq_job, ARGV[a + 2], ARGV[a + 1])
end
moved(status, 'queued', m[2], m[3])
return 'queued'
