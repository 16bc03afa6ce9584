-- arq's start of jobs, for a whole poll in one round trip (worker/arq_compat.py `start_jobs`): a job is
-- claimed (its in-progress marker set) unless it runs elsewhere, has left the queue, or is deferred.
-- KEYS: arq's queue, then the in-progress marker of each job. ARGV: now ms, marker ttl ms, the job ids.
-- Returns, per job, its queue score if claimed, else false.
local now, ttl = tonumber(ARGV[1]), ARGV[2]
local claimed = {}
for i = 2, #KEYS do
  local job_id = ARGV[i + 1]
  local score = redis.call('ZSCORE', KEYS[1], job_id)
  if redis.call('EXISTS', KEYS[i]) == 0 and score and tonumber(score) <= now then
    redis.call('PSETEX', KEYS[i], ttl, '1')
    claimed[i - 1] = score
  else
    claimed[i - 1] = false
  end
end
return claimed
