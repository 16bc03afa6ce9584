-- Every run of the batch has been submitted: record the items that are not runs, and the answer to
-- give the same request again; if no run is left unfinished, the batch is finished now.
-- Uses common.lua's batch functions with this script's own keys and times set into R and OUT.
-- KEYS: batch hash, webhooks due, webhooks data, webhooks wake, webhooks seq.
-- ARGV: now ms, now iso JSON, ttl s, pending_docs, invalid, rejected, items JSON
R.now_ms, R.now_iso, R.ttl = tonumber(ARGV[1]), ARGV[2], tonumber(ARGV[3])
OUT.due, OUT.data, OUT.wake, OUT.seq = KEYS[2], KEYS[3], KEYS[4], KEYS[5]
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
redis.call('HSET', KEYS[1], 'pending_docs', ARGV[4], 'invalid', ARGV[5], 'rejected', ARGV[6], 'items', ARGV[7],
  'sealed', '1')
if tonumber(redis.call('HGET', KEYS[1], 'unfinished')) == 0 then batch_finished(KEYS[1]) end
return 1
