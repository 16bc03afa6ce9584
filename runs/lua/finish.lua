-- The attempt ends the run (complete or failed): its fields, its last events, and on completion
-- the run's memory writes, all at once and only while it holds the lease; and arq's job with it.
-- KEYS (after the run keys): arq's retry counter of the job
-- ARGV: token, event, data, counted fields, counted (event, data) pairs, then memory writes: per hash,
--       its key, a count n, and n (field, value) pairs
if not holds_lease(ARGV[FIRST_ARG]) then return 0 end
local event, data = ARGV[FIRST_ARG + 1], ARGV[FIRST_ARG + 2]
local fields, at = counted(FIRST_ARG + 3)
local earlier
earlier, at = counted(at)
emit_all(earlier)
while at <= #ARGV do
  local n = tonumber(ARGV[at + 1])
  redis.call('HSET', ARGV[at], unpack(ARGV, at + 2, at + 1 + 2 * n))
  at = at + 2 + 2 * n
end
end_arq_job(KEYS[18])
finish(event, data, fields)
return 1
