"""Lua scripts that move a run between states atomically.

Every field of a run record hash holds a JSON value. A run's writes are fenced by its lease: a
worker may only report progress or commit while the lease key still holds its own token.
"""

from __future__ import annotations

COMMON = """
local function wake_workers(wake)
  redis.call('LPUSH', wake, '1')
  redis.call('LTRIM', wake, 0, 999)
end

local function emit(events, event, data, ttl)
  redis.call('XADD', events, 'MAXLEN', '~', 1000, '*', 'event', event, 'data', data)
  if ttl then redis.call('EXPIRE', events, ttl) end
end

-- Remove job_id from its story's queue; if it was the head, the next run of the story may start.
local function advance_story(story_queue, arq_queue, wake, job_id, now_ms)
  local head = redis.call('LINDEX', story_queue, 0)
  redis.call('LREM', story_queue, 1, job_id)
  if head == job_id then
    local nxt = redis.call('LINDEX', story_queue, 0)
    if nxt then
      redis.call('ZADD', arq_queue, now_ms, nxt)
      wake_workers(wake)
    end
  end
end

-- The tenant's set of runs queued or running, next to the run record key.
local function active_runs_key(record_key)
  return (string.gsub(record_key, ':run:[^:]+$', ':active'))
end

local function count_finished(record_key, status)
  local flow = cjson.decode(redis.call('HGET', record_key, 'flow'))
  redis.call('HINCRBYFLOAT', 'sf:metrics', 'storyflow_runs_finished_total|flow=' .. flow .. ',status=' .. status, 1)
end

-- keys: record, events, story_queue, arq_queue, wake
local function finish(k, job_id, now_ms, ttl, event, data, fields)
  count_finished(k[1], event)
  local tenant = string.match(k[1], '^sf:t:([^:]+):run:')
  redis.call('PUBLISH', 'sf:finished', tenant .. ':' .. job_id)
  redis.call('SREM', active_runs_key(k[1]), job_id)
  redis.call('HSET', k[1], unpack(fields))
  redis.call('EXPIRE', k[1], ttl)
  emit(k[2], event, data, ttl)
  advance_story(k[3], k[4], k[5], job_id, now_ms)
end

-- The progress of a run about to (re)start: nothing done yet.
local function reset_progress(record, current)
  local p = cjson.decode(redis.call('HGET', record, 'progress'))
  -- Built by hand: cjson would encode the empty `done` list as {}.
  local now = current and cjson.encode(current) or 'null'
  return '{"done":[],"current":' .. now .. ',"total":' .. p.total .. '}'
end

local function is_terminal(status)
  return status == 'complete' or status == 'failed' or status == 'cancelled'
end
"""

# KEYS: record, story_queue, arq_job, arq_queue, wake, runs_index, story_runs_index, idempotency ('' if none),
#       tenant's submissions this minute
# ARGV: job_id, arq_payload, score_ms, arq_job_ttl_ms, max_queued, idempotency_ttl_s,
#       max active runs of the tenant (0: no limit), max submissions per minute (0: no limit),
#       seconds left in this minute, record fields...
SUBMIT = (
    COMMON
    + """
if KEYS[8] ~= '' then
  local existing = redis.call('GET', KEYS[8])
  if existing then return {'existing', existing} end
end
if redis.call('ZCARD', KEYS[4]) >= tonumber(ARGV[5]) then return {'full', ''} end
local active = active_runs_key(KEYS[1])
if tonumber(ARGV[7]) > 0 and redis.call('SCARD', active) >= tonumber(ARGV[7]) then
  return {'too_many_active', '5'}
end
if tonumber(ARGV[8]) > 0 then
  if redis.call('INCR', KEYS[9]) > tonumber(ARGV[8]) then return {'rate_limited', ARGV[9]} end
  redis.call('EXPIRE', KEYS[9], 61)
end
redis.call('SADD', active, ARGV[1])
redis.call('HSET', KEYS[1], unpack(ARGV, 10))
local flow = cjson.decode(redis.call('HGET', KEYS[1], 'flow'))
redis.call('HINCRBYFLOAT', 'sf:metrics', 'storyflow_runs_submitted_total|flow=' .. flow, 1)
redis.call('PSETEX', KEYS[3], ARGV[4], ARGV[2])
if redis.call('RPUSH', KEYS[2], ARGV[1]) == 1 then
  redis.call('ZADD', KEYS[4], ARGV[3], ARGV[1])
  wake_workers(KEYS[5])
end
redis.call('ZADD', KEYS[6], ARGV[3], ARGV[1])
redis.call('ZADD', KEYS[7], ARGV[3], ARGV[1])
if KEYS[8] ~= '' then redis.call('SET', KEYS[8], ARGV[1], 'EX', ARGV[6]) end
return {'queued', ARGV[1]}
"""
)

# KEYS: record, lease, arq_in_progress, events, story_queue, arq_queue, wake
# ARGV: token, lease_ms, now_iso_json, max_attempts, now_ms, ttl, job_id, first node ('' if not known)
BEGIN = (
    COMMON
    + """
local raw = redis.call('HGET', KEYS[1], 'status')
if not raw then return {'gone'} end
local status = cjson.decode(raw)
if status ~= 'queued' and status ~= 'in_progress' then return {'skip', status} end
local attempts = redis.call('HINCRBY', KEYS[1], 'attempts', 1)
if attempts > tonumber(ARGV[4]) then
  local err = cjson.encode({type = 'attempts_exhausted', message =
    'the run was interrupted ' .. (attempts - 1) .. ' times (worker crash or lost lease); giving up'})
  redis.call('DEL', KEYS[2])
  finish({KEYS[1], KEYS[4], KEYS[5], KEYS[6], KEYS[7]}, ARGV[7], ARGV[5], ARGV[6], 'failed', err,
    {'status', '"failed"', 'attempts', attempts - 1, 'finished_at', ARGV[3], 'error', err,
     'result', 'null', 'outputs', '{}'})
  return {'exhausted'}
end
redis.call('SET', KEYS[2], ARGV[1], 'PX', ARGV[2])
redis.call('PEXPIRE', KEYS[3], ARGV[2])
local first = ARGV[8] ~= '' and ARGV[8] or nil
redis.call('HSET', KEYS[1], 'status', '"in_progress"', 'started_at', ARGV[3],
  'progress', reset_progress(KEYS[1], first), 'outputs', '{}', 'result', 'null', 'error', 'null')
emit(KEYS[4], 'started', cjson.encode({attempt = attempts}), nil)
if first then emit(KEYS[4], 'node_started', cjson.encode({node = first}), nil) end
local fields = redis.call('HMGET', KEYS[1], 'flow', 'story_id', 'input')
return {'run', attempts, fields[1], fields[2], fields[3]}
"""
)

# KEYS: lease, arq_in_progress; ARGV: token, lease_ms
RENEW = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
redis.call('PEXPIRE', KEYS[1], ARGV[2])
redis.call('PEXPIRE', KEYS[2], ARGV[2])
return 1
"""

# KEYS: record, lease, events; ARGV: token, progress_json, outputs_json, then (event, data) pairs
PROGRESS = (
    COMMON
    + """
if redis.call('GET', KEYS[2]) ~= ARGV[1] then return 0 end
redis.call('HSET', KEYS[1], 'progress', ARGV[2], 'outputs', ARGV[3])
for i = 4, #ARGV, 2 do emit(KEYS[3], ARGV[i], ARGV[i + 1], nil) end
return 1
"""
)

# KEYS: record, lease, events, story_queue, arq_queue, wake
# ARGV: token, job_id, now_ms, ttl, event, data, n_fields, fields..., n_earlier, earlier (event, data) pairs...,
#       then (hash, field, value) memory writes
FINISH = (
    COMMON
    + """
if redis.call('GET', KEYS[2]) ~= ARGV[1] then return 0 end
redis.call('DEL', KEYS[2])
local n = tonumber(ARGV[7])
local fields = {}
for i = 8, 7 + n do fields[#fields + 1] = ARGV[i] end
local at = 8 + n
local n_earlier = tonumber(ARGV[at])
for i = at + 1, at + n_earlier, 2 do emit(KEYS[3], ARGV[i], ARGV[i + 1], nil) end
for i = at + 1 + n_earlier, #ARGV, 3 do redis.call('HSET', ARGV[i], ARGV[i + 1], ARGV[i + 2]) end
finish({KEYS[1], KEYS[3], KEYS[4], KEYS[5], KEYS[6]}, ARGV[2], ARGV[3], ARGV[4], ARGV[5], ARGV[6], fields)
return 1
"""
)

# KEYS: record, lease, wake; ARGV: token
REQUEUE = (
    COMMON
    + """
if redis.call('GET', KEYS[2]) ~= ARGV[1] then return 0 end
redis.call('DEL', KEYS[2])
redis.call('HINCRBY', KEYS[1], 'attempts', -1)
redis.call('HSET', KEYS[1], 'status', '"queued"', 'progress', reset_progress(KEYS[1]), 'outputs', '{}')
wake_workers(KEYS[3])
return 1
"""
)

# KEYS: record, lease, events, story_queue, arq_queue, wake, arq_job, arq_abort
# ARGV: job_id, now_ms, ttl, now_iso_json
CANCEL = (
    COMMON
    + """
local raw = redis.call('HGET', KEYS[1], 'status')
if not raw then return 'missing' end
local status = cjson.decode(raw)
if is_terminal(status) then return 'finished' end
redis.call('DEL', KEYS[2])
if status == 'in_progress' then
  redis.call('ZADD', KEYS[8], ARGV[2], ARGV[1])
else
  redis.call('ZREM', KEYS[5], ARGV[1])
  redis.call('DEL', KEYS[7])
end
finish({KEYS[1], KEYS[3], KEYS[4], KEYS[5], KEYS[6]}, ARGV[1], ARGV[2], ARGV[3], 'cancelled', '{}',
  {'status', '"cancelled"', 'finished_at', ARGV[4], 'result', 'null', 'outputs', '{}'})
return 'cancelled'
"""
)
