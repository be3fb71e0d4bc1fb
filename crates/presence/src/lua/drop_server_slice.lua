-- Removes one HSCAN page (about ARGV[3] entries from cursor ARGV[4]) of a
-- server's entries: its connections leave their rooms and its routes go.
-- Returns {next cursor, rooms whose membership changed}; cursor "0" ends it.
-- Entries deleted behind the cursor do not upset the scan: every entry present
-- from start to end is returned once.
-- With ARGV[5] = "lapsed" it removes nothing once the server holds a lease in
-- KEYS[2] again (it came back and registers what it holds): cursor "0".
local server, prefix, server_id, slice, cursor = KEYS[1], ARGV[1], ARGV[2], ARGV[3], ARGV[4]
if ARGV[5] == 'lapsed' and redis.call('ZSCORE', KEYS[2], server_id) then
  return {'0', {}}
end
local scanned = redis.call('HSCAN', server, cursor, 'COUNT', slice)
local entries = scanned[2]
local changed = {}
for i = 1, #entries, 2 do
  local field = entries[i]
  if string.sub(field, 1, 1) == '@' then
    local user = string.match(field, '^@(%d+)|')
    redis.call('HDEL', prefix .. 'route:user:' .. user, server_id)
  else
    local room, user = string.match(field, '^(%d+)|(%d+)|')
    local users, names = prefix .. 'room:' .. room .. ':users', prefix .. 'room:' .. room .. ':names'
    redis.call('HDEL', prefix .. 'route:room:' .. room, server_id)
    local left = redis.call('HINCRBY', users, user, -1)
    if left <= 0 then
      redis.call('HDEL', users, user)
      redis.call('HDEL', names, user)
      table.insert(changed, room)
    end
  end
  redis.call('HDEL', server, field)
end
return {scanned[1], changed}
