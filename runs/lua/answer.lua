-- A person answers a human step: the run is queued again, once. A second answer, or one that lost
-- a race with a cancel, finds the run no longer awaiting (or awaiting another question) and does nothing.
-- ARGV: the `awaiting` value answered (JSON, as read), job payload, payload ttl ms, counted fields,
--       counted (event, data) pairs
local a = FIRST_ARG
local m = redis.call('HMGET', R.record, 'status', 'batch_id', 'webhook_url', 'awaiting')
if m[1] ~= '"awaiting_input"' or m[4] ~= ARGV[a] then return 'not_awaiting' end
local fields, at = counted(a + 3)
local events = counted(at)
redis.call('HSET', R.record, unpack(fields))
redis.call('ZREM', R.awaiting, R.member)
emit_all(events)
enqueue(R.arq_job, R.arq_queue, R.wake, R.job_id, ARGV[a + 1], ARGV[a + 2], R.now_ms)
moved('awaiting_input', 'queued', m[2], m[3])
return 'queued'
