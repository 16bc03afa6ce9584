-- A step's checkpoint and progress, and the run's events, while the attempt holds the lease.
-- ARGV: token, then a counted list of record fields (name, JSON), then (event, data) pairs
if not holds_lease(ARGV[FIRST_ARG]) then return 0 end
local fields, at = counted(FIRST_ARG + 1)
if #fields > 0 then redis.call('HSET', R.record, unpack(fields)) end
for i = at, #ARGV, 2 do emit(R.events, ARGV[i], ARGV[i + 1]) end
return 1
