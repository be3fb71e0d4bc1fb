-- Removes and returns the servers whose lease ended (only one reaper gets each).
local leases, boots, now = KEYS[1], KEYS[2], ARGV[1]
local lapsed = redis.call('ZRANGEBYSCORE', leases, '-inf', '(' .. now)
for _, server in ipairs(lapsed) do
  redis.call('ZREM', leases, server)
  redis.call('HDEL', boots, server)
end
return lapsed
