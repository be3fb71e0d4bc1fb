-- Returns the user's connections in the room, 0 if this one was in already.
local users, names, server, route = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local user, name, field, server_id = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
if redis.call('HSETNX', server, field, 1) == 0 then return 0 end
redis.call('HINCRBY', route, server_id, 1)
redis.call('HSET', names, user, name)
return redis.call('HINCRBY', users, user, 1)
