-- out_advance.lua: a status webhook moves one message's record forward.
--
-- KEYS[1] record   KEYS[2] broadcast hash (counts)
-- ARGV[1] status   ARGV[2] at ms   ARGV[3] wamid ('' = none)   ARGV[4] error code   ARGV[5] error
-- ARGV[6] '1' when the message belongs to the broadcast KEYS[2]
--
-- Returns 1 when the record moved, 0 when unknown or not a move forward.

if redis.call('EXISTS', KEYS[1]) == 0 then
  return 0
end
local counter = nil
if ARGV[6] == '1' then
  counter = KEYS[2]
end
if not move(KEYS[1], ARGV[1], ARGV[2], counter) then
  return 0
end
if ARGV[3] ~= '' and not redis.call('HGET', KEYS[1], 'wamid') then
  redis.call('HSET', KEYS[1], 'wamid', ARGV[3])
end
if ARGV[1] == 'failed' then
  if ARGV[4] ~= '' then
    redis.call('HSET', KEYS[1], 'ecode', ARGV[4])
  end
  if ARGV[5] ~= '' then
    redis.call('HSET', KEYS[1], 'err', ARGV[5])
  end
end
return 1
