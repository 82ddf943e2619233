-- dead_letter.lua: move one entry to the channel's dead-letter stream, then ack and delete it,
-- fenced by the lease.
--
-- KEYS[1]  the partition lease        (keys.lease(ch, p))
-- KEYS[2]  the partition stream       (keys.stream(ch, p))
-- KEYS[3]  the dead-letter stream     (keys.dead_letters(ch))
-- ARGV[1]  the holder's value "<owner>:<token>"
-- ARGV[2]  consumer group (keys::GROUP)
-- ARGV[3]  entry id
-- ARGV[4]  payload (field e)
-- ARGV[5]  conversation (field c)
-- ARGV[6]  error text
-- ARGV[7]  partition number
--
-- Dead-letter fields: e, c, error, partition, source (the entry id in the partition stream).
-- Returns 1 when moved, 0 when the lease is not ours or the entry is no longer pending
-- (nothing written then).

if redis.call('GET', KEYS[1]) ~= ARGV[1] then
  return 0
end
local acked = redis.call('XACK', KEYS[2], ARGV[2], ARGV[3])
if acked == 0 then
  return 0
end
redis.call('XADD', KEYS[3], '*', 'e', ARGV[4], 'c', ARGV[5], 'error', ARGV[6],
  'partition', ARGV[7], 'source', ARGV[3])
redis.call('XDEL', KEYS[2], ARGV[3])
return 1
