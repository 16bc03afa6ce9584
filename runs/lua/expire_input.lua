-- A run awaited input past its deadline: it fails with input_timeout. ARGV: error JSON
local deadline = redis.call('ZSCORE', R.awaiting, R.member)
if redis.call('HGET', R.record, 'status') ~= '"awaiting_input"' then
  redis.call('ZREM', R.awaiting, R.member)
  return 0
end
if not deadline or tonumber(deadline) > R.now_ms then return 0 end
local err = ARGV[FIRST_ARG]
finish('failed', cjson.encode({error = cjson.decode(err)}), {'status', '"failed"', 'finished_at', R.now_iso,
  'error', err, 'result', 'null', 'awaiting', 'null'}, true)
return 1
