-- After arq has finished a job whose run stopped without ending (it awaits input, or it was
-- cancelled while running): if the run was queued again meanwhile (answered, retried) and arq's
-- cleanup took its job away, put it back. ARGV: job payload, payload ttl ms
if redis.call('HGET', R.record, 'status') ~= '"queued"' then return 0 end
if redis.call('LINDEX', R.story_queue, 0) ~= R.job_id then return 0 end
if redis.call('EXISTS', R.arq_job) == 1 and redis.call('ZSCORE', R.arq_queue, R.job_id) then return 0 end
enqueue(R.arq_job, R.arq_queue, R.wake, R.job_id, ARGV[FIRST_ARG], ARGV[FIRST_ARG + 1], R.now_ms)
return 1
