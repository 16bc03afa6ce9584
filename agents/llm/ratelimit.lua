-- Reserve the next moment a model may be called, fleet-wide, in first-come order.
--
-- A sliding log per model: every reservation is kept (score: the moment it may be sent) for one
-- window. A call may go once fewer than `rpm` calls, and fewer than `tpm` tokens, fall within the
-- window that ends at its moment, and not before a 429's pause ends. Reservations are handed out
-- in increasing order, so callers are served first come, first served, and each waits on its own
-- clock without holding a connection.
--
-- KEYS: calls log (zset id -> ms), tokens log (zset 'id:tokens' -> ms), pause (ms the pause ends)
-- ARGV: id, rpm (0: off), tpm (0: off), estimated tokens, window_ms, margin_ms
-- Returns {the moment (ms) the call may be sent, now (ms)}, both on Redis' clock: workers' clocks may differ.
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000 + math.floor(tonumber(clock[2]) / 1000)
local window, margin = tonumber(ARGV[5]), tonumber(ARGV[6])
local rpm, tpm, cost = tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
local at = math.max(now, tonumber(redis.call('GET', KEYS[3]) or '0'))
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - window)
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now - window)
if rpm > 0 then
  local n = redis.call('ZCARD', KEYS[1])
  if n >= rpm then
    -- The rpm-th latest reservation must have left the window.
    local oldest = redis.call('ZRANGE', KEYS[1], n - rpm, n - rpm, 'WITHSCORES')
    at = math.max(at, tonumber(oldest[2]) + window + margin)
  end
  redis.call('ZADD', KEYS[1], at, ARGV[1])
  redis.call('PEXPIRE', KEYS[1], 2 * window + margin)
end
if tpm > 0 then
  cost = math.min(cost, tpm)
  local entries = redis.call('ZREVRANGE', KEYS[2], 0, -1, 'WITHSCORES')
  local total = cost
  for i = 1, #entries, 2 do
    total = total + tonumber(string.match(entries[i], ':(%d+)$'))
    if total > tpm then
      -- This reservation, and every older one, must have left the window.
      at = math.max(at, tonumber(entries[i + 1]) + window + margin)
      break
    end
  end
  redis.call('ZADD', KEYS[2], at, ARGV[1] .. ':' .. cost)
  redis.call('PEXPIRE', KEYS[2], 2 * window + margin)
end
return {at, now}
