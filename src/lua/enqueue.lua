-- enqueue.lua: dedupe one event, resolve its canonical conversation, append it to its partition.
--
-- KEYS[1]        seen marker of the event id            (keys.seen(ch, id))
-- KEYS[2]        alias hash of the channel              (keys.aliases(ch)): contact id -> "<partition>:<canonical id>"
-- KEYS[3 .. 2+P] the channel's partition streams 0..P-1 (keys.stream(ch, p)); P = #KEYS - 2
-- ARGV[1]        dedupe TTL in seconds
-- ARGV[2]        approximate stream cap (MAXLEN ~), 0 = no cap
-- ARGV[3]        payload: the normalized event JSON
-- ARGV[4 ..]     candidate contact ids, preferred first, as pairs: id, partition_of(id, P)
--                (no pairs: an account-level event -> partition 0, conversation "")
--
-- Returns {0} when the id was seen within the TTL (nothing written), else
-- {1, partition, canonical conversation, entry id}.
--
-- The seen marker is written last: a script that fails half way (e.g. OOM on XADD) leaves no
-- marker, so the sender's retry is not mistaken for a duplicate. Scripts run atomically, so
-- checking with EXISTS first and setting at the end is as safe as SET NX up front.

if redis.call('EXISTS', KEYS[1]) == 1 then
  return {0}
end

local partitions = #KEYS - 2
local partition = 0
local conversation = ''

local n = (#ARGV - 3) / 2
if n >= 1 then
  local value = false
  for i = 0, n - 1 do
    value = redis.call('HGET', KEYS[2], ARGV[4 + 2 * i])
    if value then
      break
    end
  end
  if not value then
    value = ARGV[5] .. ':' .. ARGV[4]
  end
  local sep = string.find(value, ':', 1, true)
  partition = tonumber(string.sub(value, 1, sep - 1))
  conversation = string.sub(value, sep + 1)
  -- The partition count may have changed since the alias was learned: stay in range.
  if partition >= partitions then
    partition = partition % partitions
    value = partition .. ':' .. conversation
  end
  -- Learn every id of this person: a later payload carrying only one of them still lands
  -- in the same conversation and partition.
  for i = 0, n - 1 do
    redis.call('HSETNX', KEYS[2], ARGV[4 + 2 * i], value)
  end
end

local stream = KEYS[3 + partition]
local entry
local maxlen = tonumber(ARGV[2])
if maxlen > 0 then
  entry = redis.call('XADD', stream, 'MAXLEN', '~', maxlen, '*', 'e', ARGV[3], 'c', conversation)
else
  entry = redis.call('XADD', stream, '*', 'e', ARGV[3], 'c', conversation)
end

redis.call('SET', KEYS[1], '1', 'EX', tonumber(ARGV[1]))
return {1, partition, conversation, entry}
