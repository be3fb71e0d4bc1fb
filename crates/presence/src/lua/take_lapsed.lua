-- Moves the servers whose lease ended before ARGV[1] from the leases to the
-- due set (only one reaper takes each from the leases; a reap is idempotent)
-- and returns every due server, those of unfinished earlier reaps included.
local leases, boots, epochs, due, now = KEYS[1], KEYS[2], KEYS[3], KEYS[4], ARGV[1]
local lapsed = redis.call('ZRANGEBYSCORE', leases, '-inf', '(' .. now)
for _, server in ipairs(lapsed) do
  redis.call('ZREM', leases, server)
  redis.call('HDEL', boots, server)
  redis.call('HDEL', epochs, server)
  redis.call('SADD', due, server)
end
return redis.call('SMEMBERS', due)
