-- promote_timers.lua: move due timers into the partition's own stream (so they are ordered with
-- the conversation's messages), fenced by the lease.
--
-- KEYS[1]  the partition lease   (keys.lease(ch, p))
-- KEYS[2]  the partition timers  (keys.timers(ch, p)), ZSET member -> due time in ms
-- KEYS[3]  the partition stream  (keys.stream(ch, p))
-- ARGV[1]  the holder's value "<owner>:<token>"
-- ARGV[2]  now, in ms
-- ARGV[3]  max timers to promote
-- ARGV[4]  approximate stream cap (MAXLEN ~), 0 = none
--
-- Member format: the JSON object {"c": conversation, "e": payload JSON as a string}
-- (queue::timer_member builds it). A member that is not such an object is promoted as the
-- payload itself, with conversation "".
-- Returns the number promoted, or a LEASELOST error when the lease is not ours.

if redis.call('GET', KEYS[1]) ~= ARGV[1] then
  return redis.error_reply('LEASELOST lease ' .. KEYS[1] .. ' is not held by ' .. ARGV[1])
end
local due = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', ARGV[2], 'LIMIT', 0, tonumber(ARGV[3]))
local maxlen = tonumber(ARGV[4])
for _, member in ipairs(due) do
  local e, c = member, ''
  local ok, decoded = pcall(cjson.decode, member)
  if ok and type(decoded) == 'table' and type(decoded.e) == 'string' then
    e = decoded.e
    if type(decoded.c) == 'string' then
      c = decoded.c
    end
  end
  if maxlen > 0 then
    redis.call('XADD', KEYS[3], 'MAXLEN', '~', maxlen, '*', 'e', e, 'c', c)
  else
    redis.call('XADD', KEYS[3], '*', 'e', e, 'c', c)
  end
  redis.call('ZREM', KEYS[2], member)
end
return #due
