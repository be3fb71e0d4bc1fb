-- Stores a token, trims the user's tokens to the cap, returns the revoked ones.
-- KEYS[3] holds every live token by expiry, for counting active sessions.
local session, user_sessions, all_sessions = KEYS[1], KEYS[2], KEYS[3]
local token, value, ttl_ms, now_ms, cap, prefix = ARGV[1], ARGV[2], tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5]), ARGV[6]
redis.call('ZREMRANGEBYSCORE', user_sessions, '-inf', now_ms - ttl_ms)
local revoked = {}
local excess = redis.call('ZCARD', user_sessions) - cap + 1
if excess > 0 then
  local oldest = redis.call('ZRANGE', user_sessions, 0, excess - 1)
  for _, old in ipairs(oldest) do
    redis.call('DEL', prefix .. 'session:' .. old)
    redis.call('ZREM', user_sessions, old)
    redis.call('ZREM', all_sessions, old)
    table.insert(revoked, old)
  end
end
redis.call('SET', session, value, 'PX', ttl_ms)
-- Strictly increasing scores: two logins in one millisecond keep their order.
local newest = redis.call('ZRANGE', user_sessions, -1, -1, 'WITHSCORES')
local score = now_ms
if newest[2] and tonumber(newest[2]) >= score then score = tonumber(newest[2]) + 1 end
redis.call('ZADD', user_sessions, score, token)
redis.call('PEXPIRE', user_sessions, ttl_ms)
redis.call('ZADD', all_sessions, now_ms + ttl_ms, token)
return revoked
