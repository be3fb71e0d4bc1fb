-- Attaches a connection unless its user holds ARGV[3] (> 0) already, summed
-- over every node's count in the user's route; 1 if attached (or was), 0 if
-- refused.
local server, route = KEYS[1], KEYS[2]
local field, server_id, cap = ARGV[1], ARGV[2], tonumber(ARGV[3])
if redis.call('HEXISTS', server, field) == 1 then return 1 end
if cap > 0 then
  local held = 0
  for _, n in ipairs(redis.call('HVALS', route)) do held = held + tonumber(n) end
  if held >= cap then return 0 end
end
redis.call('HSET', server, field, 1)
redis.call('HINCRBY', route, server_id, 1)
return 1
