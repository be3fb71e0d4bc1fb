-- Forgets server ARGV[1]'s lease, boot, epoch and due reap: after its
-- presence was dropped (a restart) or reaped.
local leases, boots, epochs, due, server = KEYS[1], KEYS[2], KEYS[3], KEYS[4], ARGV[1]
redis.call('ZREM', leases, server)
redis.call('HDEL', boots, server)
redis.call('HDEL', epochs, server)
redis.call('SREM', due, server)
return 0
