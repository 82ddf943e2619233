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
-- The seen marker is claimed first (SET NX EX: one command for check and set). If the XADD
-- then fails (e.g. OOM), the marker is deleted again before the error is returned, so the
-- sender's retry is not mistaken for a duplicate. Scripts run atomically: nobody sees the
-- marker without its entry.
--
-- Cost per event on the hot path (a known contact): SET NX EX, HMGET, XADD.

if not redis.call('SET', KEYS[1], '1', 'NX', 'EX', tonumber(ARGV[1])) then
  return {0}
end

local partitions = #KEYS - 2
local partition = 0
local conversation = ''

local n = (#ARGV - 3) / 2
if n >= 1 then
  local ids = {}
  for i = 0, n - 1 do
    ids[i + 1] = ARGV[4 + 2 * i]
  end
  -- One round for every id of this person; the first one known names the conversation.
  local known = redis.call('HMGET', KEYS[2], unpack(ids))
  local value = false
  for i = 1, n do
    if known[i] then
      value = known[i]
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
  -- Learn the ids not known yet: a later payload carrying only one of them still lands in
  -- the same conversation and partition. Known ids keep their first mapping.
  for i = 1, n do
    if not known[i] then
      redis.call('HSETNX', KEYS[2], ids[i], value)
    end
  end
end

local stream = KEYS[3 + partition]
local entry
local maxlen = tonumber(ARGV[2])
if maxlen > 0 then
  entry = redis.pcall('XADD', stream, 'MAXLEN', '~', maxlen, '*', 'e', ARGV[3], 'c', conversation)
else
  entry = redis.pcall('XADD', stream, '*', 'e', ARGV[3], 'c', conversation)
end
if type(entry) == 'table' and entry.err then
  redis.call('DEL', KEYS[1])
  return entry
end

return {1, partition, conversation, entry}
