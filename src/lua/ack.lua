-- ack.lua: acknowledge and delete handled entries, fenced by the lease.
--
-- KEYS[1]  the partition lease  (keys.lease(ch, p))
-- KEYS[2]  the partition stream (keys.stream(ch, p))
-- ARGV[1]  the holder's value "<owner>:<token>"
-- ARGV[2]  consumer group (keys::GROUP)
-- ARGV[3 ..] entry ids (one or more: a worker acks a handled batch in one call)
--
-- Returns how many were acknowledged; -1 when the lease is not ours (a newer owner will
-- handle the entries again). Deleting on ack keeps the stream to the entries still to be
-- handled: nothing has to be trimmed past the group's position.

if redis.call('GET', KEYS[1]) ~= ARGV[1] then
  return -1
end
local ids = {}
for i = 3, #ARGV do
  ids[#ids + 1] = ARGV[i]
end
local acked = redis.call('XACK', KEYS[2], ARGV[2], unpack(ids))
redis.call('XDEL', KEYS[2], unpack(ids))
return acked
