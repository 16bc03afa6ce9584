-- Keep the lease (and arq's in-progress marker) while the attempt runs. ARGV: token, lease ms
if not holds_lease(ARGV[FIRST_ARG]) then return 0 end
redis.call('PEXPIRE', R.lease, ARGV[FIRST_ARG + 1])
redis.call('PEXPIRE', R.in_progress, ARGV[FIRST_ARG + 1])
return 1
