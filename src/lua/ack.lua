-- ack.lua: acknowledge and delete one entry, fenced by the lease.
--
-- KEYS[1]  the partition lease  (keys.lease(ch, p))
-- KEYS[2]  the partition stream (keys.stream(ch, p))
-- ARGV[1]  the holder's value "<owner>:<token>"
-- ARGV[2]  consumer group (keys::GROUP)
-- ARGV[3]  entry id
--
-- Returns 1 when acknowledged, 0 when the lease is not ours (a newer owner will handle the
-- entry again) or the entry was not pending. Deleting on ack keeps the stream to the entries
-- still to be handled: nothing has to be trimmed past the group's position.

if redis.call('GET', KEYS[1]) ~= ARGV[1] then
  return 0
end
local acked = redis.call('XACK', KEYS[2], ARGV[2], ARGV[3])
if acked == 1 then
  redis.call('XDEL', KEYS[2], ARGV[3])
end
return acked
