-- Returns the user's connections left in the room, -1 if this one was not in.
local users, names, server, route = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local user, field, server_id = ARGV[1], ARGV[2], ARGV[3]
if redis.call('HDEL', server, field) == 0 then return -1 end
if redis.call('HINCRBY', route, server_id, -1) <= 0 then redis.call('HDEL', route, server_id) end
local left = redis.call('HINCRBY', users, user, -1)
if left <= 0 then
  redis.call('HDEL', users, user)
  redis.call('HDEL', names, user)
end
return left
