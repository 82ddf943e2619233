-- out_take.lua: a sender takes the lanes whose time has come.
--
-- KEYS[1] ready   KEYS[2] busy   KEYS[3] owner   KEYS[4] grant counter   KEYS[5] wait
-- ARGV[1] now ms   ARGV[2] lease ms   ARGV[3] owner name   ARGV[4] most lanes to take
--
-- Lanes whose lease expired (their sender died) go back to ready first, due now: their
-- messages never left the lane, so order holds across the takeover.
-- Returns {reclaimed, next ready ms or -1, customer1, token1, customer2, token2, …}.

local now = tonumber(ARGV[1])
local expired = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', now, 'LIMIT', 0, 256)
for _, c in ipairs(expired) do
  redis.call('ZREM', KEYS[2], c)
  redis.call('HDEL', KEYS[3], c)
  redis.call('ZADD', KEYS[1], now, c)
end

local out = {#expired, -1}
local max = tonumber(ARGV[4])
if max > 0 then
  local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'LIMIT', 0, max)
  for _, c in ipairs(due) do
    local token = ARGV[3] .. ':' .. redis.call('INCR', KEYS[4])
    redis.call('ZREM', KEYS[1], c)
    redis.call('ZADD', KEYS[2], now + tonumber(ARGV[2]), c)
    redis.call('HSET', KEYS[3], c, token)
    redis.call('HDEL', KEYS[5], c)
    out[#out + 1] = c
    out[#out + 1] = token
  end
end
local nxt = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
if nxt[2] then
  out[2] = tonumber(nxt[2])
end
return out
