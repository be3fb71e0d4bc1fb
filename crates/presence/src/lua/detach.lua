local server, route = KEYS[1], KEYS[2]
local field, server_id = ARGV[1], ARGV[2]
if redis.call('HDEL', server, field) == 1 then
  if redis.call('HINCRBY', route, server_id, -1) <= 0 then redis.call('HDEL', route, server_id) end
end
return 0
