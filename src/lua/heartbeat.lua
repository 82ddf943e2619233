-- Registers a live worker and counts the live ones (for each worker's fair share of partitions).
-- Uses the server's clock, so workers on machines with skewed clocks agree.
--
-- KEYS[1]  sorted set of workers (member = worker id, score = last heartbeat, ms)
-- ARGV[1]  worker id
-- ARGV[2]  ttl in ms: a worker silent for longer is not live
-- ARGV[3]  "1" to register, "0" to leave
-- Returns the number of live workers.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local ttl = tonumber(ARGV[2])
if ARGV[3] == '1' then
  redis.call('ZADD', KEYS[1], now, ARGV[1])
else
  redis.call('ZREM', KEYS[1], ARGV[1])
end
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - ttl)
redis.call('PEXPIRE', KEYS[1], ttl * 10)
return redis.call('ZCARD', KEYS[1])
