-- An attempt starts: take the lease. A fresh run announces its first step here (one round trip
-- less); a run with a checkpoint resumes where it stopped, and the worker announces that step.
-- ARGV: token, lease ms, max attempts, first node ('' if none), first step (JSON without its closing
--       brace, 'attempt' and 'started_at'), total steps of a straight run
-- Returns {'run', attempt, flow, story_id, input, checkpoint, steps, usage, trail, progress} or
-- {'gone'}, {'skip', status}, {'exhausted'}.
local a = FIRST_ARG
local token, lease_ms, max_attempts, first, first_step = ARGV[a], ARGV[a + 1], tonumber(ARGV[a + 2]), ARGV[a + 3], ARGV[a + 4]
local raw = redis.call('HGET', R.record, 'status')
if not raw then return {'gone'} end
local status = cjson.decode(raw)
if status ~= 'queued' and status ~= 'in_progress' then return {'skip', status} end
local attempts = redis.call('HINCRBY', R.record, 'attempts', 1)
local base = tonumber(redis.call('HGET', R.record, 'retry_base') or '0')
if attempts - base > max_attempts then
  local err = cjson.encode({type = 'attempts_exhausted', message =
    'the run was interrupted ' .. (attempts - base - 1) .. ' times (worker crash or lost lease); giving up'})
  finish('failed', err, {'status', '"failed"', 'attempts', attempts - 1, 'finished_at', R.now_iso, 'error', err,
    'result', 'null', 'outputs', '{}'})
  return {'exhausted'}
end
redis.call('SET', R.lease, token, 'PX', lease_ms)
redis.call('PEXPIRE', R.in_progress, lease_ms)
redis.call('HSET', R.record, 'status', '"in_progress"', 'started_at', R.now_iso, 'result', 'null', 'error', 'null')
emit(R.events, 'started', cjson.encode({attempt = attempts}))
local checkpoint = redis.call('HGET', R.record, 'checkpoint') or ''
if checkpoint == 'null' then checkpoint = '' end
if checkpoint == '' and first ~= '' then
  local progress = cjson.decode(redis.call('HGET', R.record, 'progress'))
  local step = first_step .. ',"attempt":' .. attempts .. ',"started_at":' .. R.now_iso .. '}'
  -- Built by hand: cjson would encode the empty `done` list as {}.
  redis.call('HSET', R.record, 'progress', '{"done":[],"current":' .. cjson.encode(first) .. ',"total":' ..
    progress.total .. '}', 'steps', '[' .. step .. ']', 'outputs', '{}')
  emit(R.events, 'node_started', cjson.encode({node = first}))
end
local f = redis.call('HMGET', R.record, 'flow', 'story_id', 'input', 'steps', 'usage', 'trail', 'progress')
return {'run', attempts, f[1], f[2], f[3], checkpoint, f[4], f[5], f[6] or '', f[7]}
