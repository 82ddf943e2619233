-- out_defer.lua: a sender gives a lane back, ready again at a given time.
--
-- KEYS[1] lane   KEYS[2] ready   KEYS[3] busy   KEYS[4] owner   KEYS[5] wait
-- ARGV[1] customer   ARGV[2] grant token   ARGV[3] ready at (ms)   ARGV[4] reason ('' = none)
-- ARGV[5] head JSON as read ('' = no change)   ARGV[6] head JSON with one more attempt
--
-- Fenced: returns 0 and writes nothing when the grant is stale. An empty lane is dropped.

if redis.call('HGET', KEYS[4], ARGV[1]) ~= ARGV[2] then
  return 0
end
redis.call('ZREM', KEYS[3], ARGV[1])
redis.call('HDEL', KEYS[4], ARGV[1])
if ARGV[5] ~= '' and redis.call('LINDEX', KEYS[1], 0) == ARGV[5] then
  -- Only the exact copy we read: a bump is never applied twice, nor to another message.
  redis.call('LSET', KEYS[1], 0, ARGV[6])
end
if redis.call('LLEN', KEYS[1]) > 0 then
  redis.call('ZADD', KEYS[2], ARGV[3], ARGV[1])
  if ARGV[4] ~= '' then
    redis.call('HSET', KEYS[5], ARGV[1], ARGV[4])
  else
    redis.call('HDEL', KEYS[5], ARGV[1])
  end
else
  redis.call('HDEL', KEYS[5], ARGV[1])
end
return 1
