-- Takes the lowest free id; returns {id, last ms, fresh} or {-1, 0, 0} when
-- all are taken. fresh is 1 when Redis holds no record of earlier leases (a
-- new Redis, or one that came back empty): another instance may then still be
-- using the id until its next renewal finds its lease gone.
local prefix, holder, ttl = ARGV[1], ARGV[2], ARGV[3]
for id = 0, 1023 do
  if redis.call('SET', prefix .. 'worker:' .. id, holder, 'NX', 'PX', ttl) then
    local last = redis.call('GET', prefix .. 'worker-last:' .. id) or '0'
    local fresh = redis.call('SET', prefix .. 'worker-registry', '1', 'NX') and 1 or 0
    return {id, last, fresh}
  end
end
return {-1, '0', 0}
