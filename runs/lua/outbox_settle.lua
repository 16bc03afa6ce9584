-- The outcome of one delivery attempt. 'delivered' and 'failed' (given up) end the delivery; 'retry'
-- and 'release' (not attempted: its host was busy) make it due again. The owner (run record or batch)
-- shows the outcome if this delivery is still its latest.
-- KEYS: due zset, data hash, owner hash. ARGV: id, outcome, due ms (retry, release), meta JSON, owner's
-- webhook state JSON.
local id, outcome = ARGV[1], ARGV[2]
if not redis.call('HGET', KEYS[2], id) then return 0 end
if outcome == 'release' then
  redis.call('ZADD', KEYS[1], ARGV[3], id)
  return 1
end
if outcome == 'retry' then
  redis.call('ZADD', KEYS[1], ARGV[3], id)
  redis.call('HSET', KEYS[2], id, ARGV[4])
else
  redis.call('ZREM', KEYS[1], id)
  redis.call('HDEL', KEYS[2], id, id .. '|body')
end
if redis.call('HGET', KEYS[3], 'webhook_msg') == id then redis.call('HSET', KEYS[3], 'webhook', ARGV[5]) end
return 1
