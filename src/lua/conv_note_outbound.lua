-- conv_note_outbound.lua: the business sent a message outside any handled event (the send
-- API): move the conversation's noted last outbound time forward. Beside the state (field
-- `lo`), never in it: the state is written only by the partition's lease holder. A
-- conversation that does not exist yet is not created.
--
-- KEYS[1] conversation hash
-- ARGV[1] time of the send, ms
--
-- Returns 1 when the time moved, else 0.

if redis.call('EXISTS', KEYS[1]) == 0 then
  return 0
end
local noted = tonumber(redis.call('HGET', KEYS[1], 'lo') or '0')
if tonumber(ARGV[1]) > noted then
  redis.call('HSET', KEYS[1], 'lo', ARGV[1])
  return 1
end
return 0
