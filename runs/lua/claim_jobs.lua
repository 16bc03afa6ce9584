-- arq's start of jobs, for a whole poll in one round trip (worker/arq_compat.py `start_jobs`): a job is
-- claimed (its in-progress marker set) unless it runs elsewhere, has left the queue, or is deferred;
-- at most `most` jobs are claimed, the candidates looked at in order.
-- KEYS: arq's queue, then the in-progress marker of each candidate.
-- ARGV: now ms, marker ttl ms, most to claim, then the candidates' job ids.
-- Returns the queue score of each candidate claimed, false for the others.
local now, ttl, most = tonumber(ARGV[1]), ARGV[2], tonumber(ARGV[3])
local claimed, taken = {}, 0
for i = 2, #KEYS do
  claimed[i - 1] = false
  if taken < most then
    local job_id = ARGV[i + 2]
    local score = redis.call('ZSCORE', KEYS[1], job_id)
    if score and tonumber(score) <= now and redis.call('EXISTS', KEYS[i]) == 0 then
      redis.call('PSETEX', KEYS[i], ttl, '1')
      claimed[i - 1] = score
      taken = taken + 1
    end
  end
end
return claimed
