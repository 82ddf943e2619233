-- bc_cancel.lua: cancel a broadcast. Nothing more is fed; the recipients never fed are
-- counted skipped now (so `queued` only counts messages already in lanes, which are skipped
-- when their turn comes). Repeating it changes nothing.
--
-- KEYS[1] broadcast hash   KEYS[2] running set
-- ARGV[1] broadcast id
--
-- Returns 1 when it was cancelled now, 0 when it was cancelled already or does not exist.

redis.call('ZREM', KEYS[2], ARGV[1])
local state = redis.call('HGET', KEYS[1], 'state')
if state ~= 'running' then
  return 0
end
local size = tonumber(redis.call('HGET', KEYS[1], 'size') or '0')
local fed = tonumber(redis.call('HGET', KEYS[1], 'fed') or '0')
if size > fed then
  redis.call('HINCRBY', KEYS[1], 'c:skipped', size - fed)
  redis.call('HSET', KEYS[1], 'fed', size)
end
redis.call('HSET', KEYS[1], 'state', 'cancelled')
return 1
