-- A new run: its record, its place in its story's queue, and in arq's queue if the story is idle.
-- KEYS (after the run keys): runs index, story runs index, idempotency key, submissions this minute,
--       the batch's runs index (a batch's run: its job id is its place in the batch, so submitting the
--       batch again finds it)
-- ARGV: job payload, score ms, payload ttl ms, max queued, idempotency ttl s, max active (0: off),
--       max submissions a minute (0: off), seconds left in the minute, idempotency in use ('1'/'0'),
--       body digest, then the record's fields
local runs_index, story_index, idem, rate, batch_runs = KEYS[18], KEYS[19], KEYS[20], KEYS[21], KEYS[22]
local a = FIRST_ARG
local payload, score, payload_ttl = ARGV[a], ARGV[a + 1], ARGV[a + 2]
if ARGV[a + 8] == '1' then
  local existing = redis.call('GET', idem)
  if existing then
    local job_id, digest = string.match(existing, '^(%x+) (%x+)$')
    if digest ~= ARGV[a + 9] then return {'mismatch', job_id} end
    return {'existing', job_id}
  end
end
if batch_runs ~= '' and redis.call('EXISTS', R.record) == 1 then return {'existing', R.job_id} end
if redis.call('ZCARD', R.arq_queue) >= tonumber(ARGV[a + 3]) then return {'full', ''} end
if tonumber(ARGV[a + 5]) > 0 and redis.call('SCARD', R.active) >= tonumber(ARGV[a + 5]) then
  return {'too_many_active', '5'}
end
if tonumber(ARGV[a + 6]) > 0 then
  if redis.call('INCR', rate) > tonumber(ARGV[a + 6]) then return {'rate_limited', ARGV[a + 7]} end
  redis.call('EXPIRE', rate, 61)
end
redis.call('SADD', R.active, R.job_id)
redis.call('HSET', R.record, unpack(ARGV, a + 10))
local flow = cjson.decode(field_in(ARGV, 'flow', a + 10))
redis.call('HINCRBYFLOAT', R.metrics, 'storyflow_runs_submitted_total|flow=' .. flow, 1)
redis.call('PSETEX', R.arq_job, payload_ttl, payload)
if redis.call('RPUSH', R.story_queue, R.job_id) == 1 then
  redis.call('ZADD', R.arq_queue, score, R.job_id)
  wake_workers(R.wake)
end
redis.call('ZADD', runs_index, score, R.job_id)
redis.call('ZADD', story_index, score, R.job_id)
if batch_runs ~= '' then redis.call('ZADD', batch_runs, score, R.job_id) end
if ARGV[a + 8] == '1' then redis.call('SET', idem, R.job_id .. ' ' .. ARGV[a + 9], 'EX', ARGV[a + 4]) end
moved(nil, 'queued', field_in(ARGV, 'batch_id', a + 10), field_in(ARGV, 'webhook_url', a + 10))
return {'queued', R.job_id}
