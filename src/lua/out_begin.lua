-- out_begin.lua: the head of a lane is being sent.
--
-- KEYS[1] record   KEYS[2] busy   KEYS[3] owner   KEYS[4] broadcast hash (counts)
-- ARGV[1] customer   ARGV[2] grant token   ARGV[3] now ms   ARGV[4] lease ms
-- ARGV[5] '1' when the message belongs to the broadcast KEYS[4]
--
-- Returns 0 when the grant is stale (nothing written), else 1 (lease extended, the record
-- moved to sending if it was queued).

if redis.call('HGET', KEYS[3], ARGV[1]) ~= ARGV[2] then
  return 0
end
local now = tonumber(ARGV[3])
redis.call('ZADD', KEYS[2], 'XX', now + tonumber(ARGV[4]), ARGV[1])
local counter = nil
if ARGV[5] == '1' then
  counter = KEYS[4]
end
move(KEYS[1], 'sending', now, counter)
return 1
