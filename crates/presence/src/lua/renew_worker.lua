-- Extends the lease if `holder` still has it and records the last ms used.
local lease, last_key = KEYS[1], KEYS[2]
local holder, ttl, last_ms = ARGV[1], ARGV[2], tonumber(ARGV[3])
if redis.call('GET', lease) ~= holder then return 0 end
redis.call('PEXPIRE', lease, ttl)
local known = tonumber(redis.call('GET', last_key) or '0')
if last_ms > known then redis.call('SET', last_key, last_ms) end
return 1
