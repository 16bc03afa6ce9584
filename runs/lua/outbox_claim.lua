-- Claim due webhook deliveries: each is hidden for a lease (it comes back if its deliverer dies).
-- KEYS: due zset, data hash. ARGV: now ms, most to claim, lease ms.
-- Returns {id, meta, body, id, meta, body, ...} and when the next delivery is due ('' if none).
local now, lease = tonumber(ARGV[1]), tonumber(ARGV[3])
local ids = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'LIMIT', 0, tonumber(ARGV[2]))
local claimed = {}
for _, id in ipairs(ids) do
  local v = redis.call('HMGET', KEYS[2], id, id .. '|body')
  if v[1] and v[2] then
    redis.call('ZADD', KEYS[1], now + lease, id)
    claimed[#claimed + 1] = id
    claimed[#claimed + 1] = v[1]
    claimed[#claimed + 1] = v[2]
  else
    redis.call('ZREM', KEYS[1], id)
  end
end
local first = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
return {claimed, first[2] or ''}
