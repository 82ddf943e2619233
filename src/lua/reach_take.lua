-- reach_take.lua: Meta's messaging limit — unique customers reached outside a service window
-- in a moving 24 h. A customer already reached inside the last 24 h costs nothing again.
--
-- KEYS[1] the reach set (customer -> last time reached, ms), per channel or per portfolio
-- KEYS[2] the limit Meta announced (a phone_number_quality_update), if any: it wins over ARGV[3]
-- ARGV[1] now ms   ARGV[2] the window (86400000)   ARGV[3] the configured limit (0 = none)
-- ARGV[4] customer
--
-- Returns 0 when the customer may be messaged (counted now), else the time (ms) when the
-- oldest reach leaves the window and a new customer fits.

local now, window, limit = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local announced = redis.call('GET', KEYS[2])
if announced then
  limit = tonumber(announced)
end
if limit == 0 then
  return 0
end
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - window)
if redis.call('ZSCORE', KEYS[1], ARGV[4]) or redis.call('ZCARD', KEYS[1]) < limit then
  redis.call('ZADD', KEYS[1], now, ARGV[4])
  redis.call('PEXPIRE', KEYS[1], window)
  return 0
end
local oldest = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
return tonumber(oldest[2]) + window + 1
