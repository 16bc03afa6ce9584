-- Shared by every run script (prepended to each). A run record is a hash whose fields hold JSON.
-- Every key a script touches comes in KEYS; names of keys are Python's business (infra/keys.py).

local function wake_workers(wake)
  redis.call('LPUSH', wake, '1')
  redis.call('LTRIM', wake, 0, 999)
end

local function emit(events, event, data)
  redis.call('XADD', events, 'MAXLEN', '~', ARGV[8], '*', 'event', event, 'data', data)  -- ARGV[8]: EVENTS_MAXLEN
end

-- Put the run in arq's queue (recreating arq's job payload) and wake a worker.
local function enqueue(arq_job, arq_queue, wake, job_id, payload, payload_ttl_ms, now_ms)
  redis.call('PSETEX', arq_job, payload_ttl_ms, payload)
  redis.call('ZADD', arq_queue, now_ms, job_id)
  wake_workers(wake)
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

local function decode_field(record, field)
  local raw = redis.call('HGET', record, field)
  if not raw then return nil end
  return cjson.decode(raw)
end

local function is_terminal(status)
  return status == 'complete' or status == 'failed' or status == 'cancelled'
end

-- Every transition script takes the same first KEYS and ARGV (runs/store.py `_run_keys`, `_run_argv`);
-- its own arguments start at ARGV[FIRST_ARG].
local R = {
  record = KEYS[1], events = KEYS[2], lease = KEYS[3], story_queue = KEYS[4], arq_job = KEYS[5],
  arq_queue = KEYS[6], in_progress = KEYS[7], wake = KEYS[8], active = KEYS[9], metrics = KEYS[10],
  expiring = KEYS[11], awaiting = KEYS[12], abort = KEYS[13],
  job_id = ARGV[1], message = ARGV[2], member = ARGV[3], channel = ARGV[4], now_ms = tonumber(ARGV[5]),
  ttl = tonumber(ARGV[6]), now_iso = ARGV[7],
}
local FIRST_ARG = 9

-- ARGV from `at`: a count n, then n values. Returns the values and the index after them.
local function counted(at)
  local n = tonumber(ARGV[at])
  local values = {}
  for i = at + 1, at + n do values[#values + 1] = ARGV[i] end
  return values, at + n + 1
end

local function emit_all(pairs_list)
  for i = 1, #pairs_list, 2 do emit(R.events, pairs_list[i], pairs_list[i + 1]) end
end

local function holds_lease(token)
  return redis.call('GET', R.lease) == token
end

-- The run has ended (complete, failed, cancelled): record it, tell waiters, let the story's next run go.
local function finish(event, data, fields, was_awaiting)
  local flow = cjson.decode(redis.call('HGET', R.record, 'flow'))
  redis.call('HINCRBYFLOAT', R.metrics, 'storyflow_runs_finished_total|flow=' .. flow .. ',status=' .. event, 1)
  redis.call('DEL', R.lease)
  redis.call('SREM', R.active, R.job_id)
  if was_awaiting then redis.call('ZREM', R.awaiting, R.member) end
  redis.call('HSET', R.record, unpack(fields))
  redis.call('EXPIRE', R.record, R.ttl)
  emit(R.events, event, data)
  redis.call('EXPIRE', R.events, R.ttl)
  -- Its entries in the run indexes go when the record expires (RunStore.forget_expired).
  redis.call('ZADD', R.expiring, R.now_ms + 1000 * R.ttl, R.member)
  redis.call('PUBLISH', R.channel, R.message)
  advance_story(R.story_queue, R.arq_queue, R.wake, R.job_id, R.now_ms)
end
