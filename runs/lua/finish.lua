-- The attempt ends the run (complete or failed): its fields, its last events, and on completion
-- the run's memory writes, all at once and only while it holds the lease.
-- ARGV: token, event, data, counted fields, counted (event, data) pairs, then (hash, field, value) writes
if not holds_lease(ARGV[FIRST_ARG]) then return 0 end
local event, data = ARGV[FIRST_ARG + 1], ARGV[FIRST_ARG + 2]
local fields, at = counted(FIRST_ARG + 3)
local earlier
earlier, at = counted(at)
emit_all(earlier)
for i = at, #ARGV, 3 do redis.call('HSET', ARGV[i], ARGV[i + 1], ARGV[i + 2]) end
finish(event, data, fields)
return 1
