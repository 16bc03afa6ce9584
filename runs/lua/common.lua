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
  local head = redis.call('LPOP', story_queue)  -- the run that ends is the head but when it was cancelled
  if head ~= job_id then
    if head then redis.call('LPUSH', story_queue, head) end
    redis.call('LREM', story_queue, 1, job_id)
    return
  end
  local nxt = redis.call('LINDEX', story_queue, 0)
  if nxt then
    redis.call('ZADD', arq_queue, now_ms, nxt)
    wake_workers(wake)
  end
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
  ttl = tonumber(ARGV[6]), now_iso = ARGV[7], tenant = ARGV[9], batch_prefix = ARGV[10], minute_prefix = ARGV[11],
}
-- The webhook outbox (runs/outbox.py): due deliveries (zset id -> when), their data (hash), a list that
-- wakes the deliverers, and the sequence that numbers deliveries.
local OUT = {due = KEYS[14], data = KEYS[15], wake = KEYS[16], seq = KEYS[17]}
local FIRST_ARG = 12

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

-- The worker's attempt has ended the arq job (the run ended or awaits a person): what arq's
-- finish_job would do next, done here in the same script (worker/arq_compat.py skips it then).
-- `retry_key` is arq's retry counter of the job.
local function end_arq_job(retry_key)
  redis.call('DEL', R.in_progress, R.arq_job, retry_key)
  redis.call('ZREM', R.abort, R.job_id)
  redis.call('ZREM', R.arq_queue, R.job_id)
end

local function holds_lease(token)
  return redis.call('GET', R.lease) == token
end

-- ---- After a transition: webhooks, batch counts, per-minute figures -------------------------------

local RECORD_FIELDS = {%RECORD_FIELDS%}

-- The record as GET /run shows it, spliced from the stored JSON values.
local function record_json(record)
  local values = redis.call('HMGET', record, unpack(RECORD_FIELDS))
  local parts = {}
  for i, name in ipairs(RECORD_FIELDS) do parts[i] = '"' .. name .. '":' .. (values[i] or 'null') end
  return '{' .. table.concat(parts, ',') .. '}'
end

local function webhook_state(url_json, delivered, attempts)
  return '{"url":' .. url_json .. ',"delivered":' .. delivered .. ',"attempts":' .. attempts
    .. ',"last_status":null,"last_error":null}'
end

-- Queue a signed POST to the URL of the payload `make_payload()` builds once the owner (a run record
-- or a batch hash) shows the new delivery as its webhook state.
local function queue_delivery(url_json, owner, make_payload)
  local id = 'msg_' .. R.now_ms .. '_' .. redis.call('INCR', OUT.seq)
  redis.call('HSET', owner, 'webhook', webhook_state(url_json, 'false', 0), 'webhook_msg', id)
  local meta = '{"url":' .. url_json .. ',"owner":' .. cjson.encode(owner) .. ',"attempts":0}'
  redis.call('HSET', OUT.data, id, meta, id .. '|body', make_payload())
  redis.call('ZADD', OUT.due, R.now_ms, id)
  redis.call('LPUSH', OUT.wake, '1')
  redis.call('LTRIM', OUT.wake, 0, 99)
end

local UNFINISHED = {queued = true, in_progress = true, awaiting_input = true}
local COUNTED = {'queued', 'in_progress', 'awaiting_input', 'complete', 'failed', 'cancelled', 'pending_docs',
  'invalid', 'rejected'}

-- The batch as GET /batches/{id} shows it (runs/batches.py reads the same hash).
local function batch_json(key)
  local f = redis.call('HMGET', key, 'batch_id', 'created_at', 'total', 'finished', 'webhook', unpack(COUNTED))
  local counts = {}
  for i, name in ipairs(COUNTED) do counts[i] = '"' .. name .. '":' .. (f[5 + i] or '0') end
  return '{"batch_id":"' .. f[1] .. '","created_at":' .. f[2] .. ',"total":' .. f[3] .. ',"counts":{'
    .. table.concat(counts, ',') .. '},"finished":' .. (f[4] == '1' and 'true' or 'false')
    .. ',"webhook":' .. (f[5] or 'null') .. '}'
end

-- The batch's last unfinished run ended (and every run of it was submitted): it is finished.
local function batch_finished(key)
  if redis.call('HGET', key, 'sealed') ~= '1' or redis.call('HGET', key, 'finished') == '1' then return end
  redis.call('HSET', key, 'finished', '1')
  redis.call('EXPIRE', key, R.ttl)
  redis.call('EXPIRE', key .. ':runs', R.ttl)  -- keys.batch_runs
  local url = redis.call('HGET', key, 'webhook_url')
  if url then
    queue_delivery(url, key, function()
      return '{"type":"batch.finished","timestamp":' .. R.now_iso .. ',"data":' .. batch_json(key) .. '}'
    end)
  end
end

local function batch_moved(key, before, after)
  if redis.call('EXISTS', key) == 0 then return end
  if before then redis.call('HINCRBY', key, before, -1) end
  redis.call('HINCRBY', key, after, 1)
  local delta = (UNFINISHED[after] and 1 or 0) - ((before and UNFINISHED[before]) and 1 or 0)
  if delta == 0 then return end
  local left = redis.call('HINCRBY', key, 'unfinished', delta)
  if left == 0 then
    batch_finished(key)
  elseif delta > 0 and redis.call('HGET', key, 'finished') == '1' then  -- a retry reopened it
    redis.call('HSET', key, 'finished', '0')
    redis.call('PERSIST', key)
    redis.call('PERSIST', key .. ':runs')
  end
end

local function count_minute(status, usage)
  local key = R.minute_prefix .. math.floor(R.now_ms / 60000)
  -- The key gets its expiry with the minute's first count of each field (not with every run).
  if redis.call('HINCRBY', key, R.tenant .. '|' .. status, 1) == 1 then
    redis.call('EXPIRE', key, %MINUTE_STATS_TTL_S%)
  end
  local tokens = usage and cjson.decode(usage).total_tokens or 0
  if tokens > 0 then redis.call('HINCRBY', key, R.tenant .. '|tokens', tokens) end
end

-- The run moved from `before` (nil: a new run) to `after`: its batch's counts, its webhook, the
-- minute's figures. `batch_raw`, `hook_raw`, `usage_raw`: its batch_id, webhook_url, usage as stored.
local function moved(before, after, batch_raw, hook_raw, usage_raw)
  if before == after then return end
  if is_terminal(after) then count_minute(after, usage_raw) end
  if batch_raw and batch_raw ~= 'null' then batch_moved(R.batch_prefix .. cjson.decode(batch_raw), before, after) end
  if hook_raw and (is_terminal(after) or after == 'awaiting_input') then
    queue_delivery(hook_raw, R.record, function()
      return '{"type":"run.' .. after .. '","timestamp":' .. R.now_iso .. ',"data":' .. record_json(R.record) .. '}'
    end)
  end
end

-- The value of `name` in a flat (name, value, ...) list, if it is there.
local function field_in(list, name, from)
  for i = from or 1, #list - 1, 2 do
    if list[i] == name then return list[i + 1] end
  end
  return nil
end

-- The fields every transition needs to know where the run was: status, batch_id, webhook_url.
local MOVE_FIELDS = {'status', 'batch_id', 'webhook_url'}

-- The run has ended (complete, failed, cancelled): record it, tell waiters, let the story's next run go.
local function finish(event, data, fields, was_awaiting)
  local f = redis.call('HMGET', R.record, 'flow', 'status', 'batch_id', 'webhook_url', 'usage')
  local flow = cjson.decode(f[1])
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
  moved(cjson.decode(f[2]), event, f[3], f[4], field_in(fields, 'usage') or f[5])
end
