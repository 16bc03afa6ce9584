-- An attempt starts: take the lease. A fresh run announces its first step here (one round trip
-- less); a run with a checkpoint resumes where it stopped, and the worker announces that step.
-- ARGV: token, lease ms, max attempts, first node ('' if none), first step (JSON without its closing
--       brace, 'attempt' and 'started_at'), total steps of a straight run
-- Returns {'run', attempt, flow, story_id, input, checkpoint, steps, usage, trail, progress} or
-- {'gone'}, {'skip', status}, {'exhausted'}.
local a = FIRST_ARG
local token, lease_ms, max_attempts, first, first_step = ARGV[a], ARGV[a + 1], tonumber(ARGV[a + 2]), ARGV[a + 3], ARGV[a + 4]
-- One read of everything the attempt needs, one write of what it changes.
local f = redis.call('HMGET', R.record, 'status', 'retry_base', 'checkpoint', 'progress', 'flow', 'story_id',
  'input', 'steps', 'usage', 'trail', 'batch_id', 'webhook_url')
if not f[1] then return {'gone'} end
local status = cjson.decode(f[1])
if status ~= 'queued' and status ~= 'in_progress' then return {'skip', status} end
local attempts = redis.call('HINCRBY', R.record, 'attempts', 1)
local base = tonumber(f[2] or '0')
if attempts - base > max_attempts then
  local err = cjson.encode({type = 'attempts_exhausted', message =
    'the run was interrupted ' .. (attempts - base - 1) .. ' times (worker crash or lost lease); giving up'})
  finish('failed', err, {'status', '"failed"', 'attempts', attempts - 1, 'finished_at', R.now_iso, 'error', err,
    'result', 'null', 'outputs', '{}'})
  return {'exhausted'}
end
redis.call('SET', R.lease, token, 'PX', lease_ms)
redis.call('PEXPIRE', R.in_progress, lease_ms)
local checkpoint = f[3] or ''
if checkpoint == 'null' then checkpoint = '' end
local fields = {'status', '"in_progress"', 'started_at', R.now_iso, 'result', 'null', 'error', 'null'}
local progress, steps = f[4], f[8]
if checkpoint == '' and first ~= '' then
  local step = first_step .. ',"attempt":' .. attempts .. ',"started_at":' .. R.now_iso .. '}'
  -- Built by hand: cjson would encode the empty `done` list as {}.
  progress = '{"done":[],"current":' .. cjson.encode(first) .. ',"total":' .. cjson.decode(progress).total .. '}'
  steps = '[' .. step .. ']'
  for _, v in ipairs({'progress', progress, 'steps', steps, 'outputs', '{}'}) do fields[#fields + 1] = v end
end
redis.call('HSET', R.record, unpack(fields))
moved(status, 'in_progress', f[11], f[12])
emit(R.events, 'started', cjson.encode({attempt = attempts}))
if checkpoint == '' and first ~= '' then emit(R.events, 'node_started', cjson.encode({node = first})) end
return {'run', attempts, f[5], f[6], f[7], checkpoint, steps, f[9], f[10] or '', progress}
