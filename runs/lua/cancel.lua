-- Cancel a queued, running or awaiting run. A running attempt is aborted through arq and, its
-- lease gone, can write nothing more. Returns 'cancelled', 'finished' or 'missing'.
local raw = redis.call('HGET', R.record, 'status')
if not raw then return 'missing' end
local status = cjson.decode(raw)
if is_terminal(status) then return 'finished' end
if status == 'in_progress' then
  redis.call('ZADD', R.abort, R.now_ms, R.job_id)
else
  redis.call('ZREM', R.arq_queue, R.job_id)
  redis.call('DEL', R.arq_job)
end
finish('cancelled', '{}', {'status', '"cancelled"', 'finished_at', R.now_iso, 'result', 'null', 'awaiting', 'null'},
  status == 'awaiting_input')
return 'cancelled'
