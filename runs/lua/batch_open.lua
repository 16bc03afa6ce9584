-- A new batch (before its runs are submitted), or the one this Idempotency-Key already opened.
-- KEYS: batch hash, tenant's batches index, idempotency key ('' if none).
-- ARGV: batch id, created_at JSON, total, webhook URL JSON ('' if none), body digest, idempotency ttl s,
--       score ms, the webhook's initial state JSON ('null' if none)
-- Returns {'created'|'existing'|'mismatch', batch id}.
if KEYS[3] ~= '' then
  local existing = redis.call('GET', KEYS[3])
  if existing then
    local batch_id, digest = string.match(existing, '^(%x+) (%x+)$')
    if digest ~= ARGV[5] then return {'mismatch', batch_id} end
    return {'existing', batch_id}
  end
  redis.call('SET', KEYS[3], ARGV[1] .. ' ' .. ARGV[5], 'EX', ARGV[6])
end
redis.call('HSET', KEYS[1], 'batch_id', ARGV[1], 'created_at', ARGV[2], 'total', ARGV[3], 'sealed', '0',
  'finished', '0', 'unfinished', 0, 'webhook', ARGV[8])
if ARGV[4] ~= '' then redis.call('HSET', KEYS[1], 'webhook_url', ARGV[4]) end
redis.call('ZADD', KEYS[2], ARGV[7], ARGV[1])
return {'created', ARGV[1]}
