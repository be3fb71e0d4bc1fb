-- Claims a client message id for a session's user, only while the session is
-- live: KEYS[1] the session, KEYS[2] the claim; ARGV[1] the session's value as
-- the caller knows it ("<userId>|<userName>"), ARGV[2] the proposed claim,
-- ARGV[3] its TTL in ms. Returns false if the session is gone or another
-- user's, else the claim's value (the proposed one if it was free).
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return false end
local existing = redis.call('GET', KEYS[2])
if existing then return existing end
redis.call('SET', KEYS[2], ARGV[2], 'PX', ARGV[3])
return ARGV[2]
