-- Renews boot ARGV[2] of server ARGV[1] until ARGV[3] (unix ms). Returns
-- {epoch} while the lease is held: the epoch stays while renewals continue and
-- is new (the expiry it was granted with) when the server had no lease, so its
-- node knows to register what it holds. Returns {} and changes nothing when
-- another boot of the server holds the lease (a restart: its presence is
-- dropped first).
local leases, boots, epochs = KEYS[1], KEYS[2], KEYS[3]
local server, boot, expires = ARGV[1], ARGV[2], ARGV[3]
local before = redis.call('HGET', boots, server)
if before and before ~= boot then
  return {}
end
local epoch = redis.call('HGET', epochs, server)
if not before or not epoch then
  epoch = expires
  redis.call('HSET', boots, server, boot)
  redis.call('HSET', epochs, server, epoch)
end
redis.call('ZADD', leases, expires, server)
return {tonumber(epoch)}
