-- Correct a reservation's token estimate with what the call really used (tokens log only).
-- KEYS: tokens log; ARGV: id, estimated tokens, used tokens
local score = redis.call('ZSCORE', KEYS[1], ARGV[1] .. ':' .. ARGV[2])
if not score then return 0 end
redis.call('ZREM', KEYS[1], ARGV[1] .. ':' .. ARGV[2])
redis.call('ZADD', KEYS[1], score, ARGV[1] .. ':' .. ARGV[3])
return 1
