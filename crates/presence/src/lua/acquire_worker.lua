-- Takes the lowest free id; returns {id, last ms} or {-1, 0} when all are taken.
local prefix, holder, ttl = ARGV[1], ARGV[2], ARGV[3]
for id = 0, 1023 do
  if redis.call('SET', prefix .. 'worker:' .. id, holder, 'NX', 'PX', ttl) then
    local last = redis.call('GET', prefix .. 'worker-last:' .. id) or '0'
    return {id, last}
  end
end
return {-1, '0'}
