-- Pause a model's calls across the fleet for ARGV[1] ms from now (Redis' clock), unless a longer pause is set.
-- KEYS: pause
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000 + math.floor(tonumber(clock[2]) / 1000)
local until_ms = now + tonumber(ARGV[1])
if until_ms <= tonumber(redis.call('GET', KEYS[1]) or '0') then return 0 end
redis.call('SET', KEYS[1], until_ms, 'PX', tonumber(ARGV[1]) + 1)
return 1
