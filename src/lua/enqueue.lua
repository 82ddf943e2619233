-- enqueue.lua: dedupe a batch of events of one channel, resolve each one's canonical
-- conversation, append each new one to its partition.
--
-- KEYS[1]             alias hash of the channel   (keys.aliases(ch)): contact id -> "<partition>:<canonical id>"
-- KEYS[2 .. 1+P]      the channel's partition streams 0..P-1 (keys.stream(ch, p))
-- KEYS[2+P .. 1+P+N]  seen marker of each event id (keys.seen(ch, id)), in batch order
-- ARGV[1]             dedupe TTL in seconds
-- ARGV[2]             approximate stream cap (MAXLEN ~), 0 = no cap
-- ARGV[3]             P, the partition count
-- then per event, in batch order:
--   payload (the normalized event JSON), k = number of candidate contact ids, and k pairs
--   id, partition_of(id, P), preferred first (k = 0: an account-level event -> partition 0,
--   conversation "")
--
-- Returns one element per event: 0 when its id was seen within the TTL (nothing written for
-- it), {partition, canonical conversation, entry id} when it was appended, or an error (its
-- marker removed again, nothing written for it) when its XADD failed (e.g. OOM), so the
-- sender's retry is not mistaken for a duplicate.
--
-- Events are taken in order, exactly as if each ran alone: a later event of the batch sees
-- the markers and aliases the earlier ones wrote. Cost per event on the hot path (a known
-- contact): SET NX EX and XADD; one HMGET for the whole batch.

local partitions = tonumber(ARGV[3])
local count = #KEYS - 1 - partitions
local ttl = ARGV[1]
local maxlen = ARGV[2]
local capped = maxlen ~= '0'

-- Where each event's arguments start, and every candidate id once, for one HMGET.
local starts, sizes = {}, {}
local ids, listed = {}, {}
local a = 4
for e = 1, count do
  local k = tonumber(ARGV[a + 1])
  starts[e] = a
  sizes[e] = k
  for i = 0, k - 1 do
    local id = ARGV[a + 2 + 2 * i]
    if not listed[id] then
      listed[id] = true
      ids[#ids + 1] = id
    end
  end
  a = a + 2 + 2 * k
end

local known = {}
if #ids > 0 then
  local values = redis.call('HMGET', KEYS[1], unpack(ids))
  for i = 1, #ids do
    if values[i] then
      known[ids[i]] = values[i]
    end
  end
end

local out = {}
for e = 1, count do
  local seen = KEYS[1 + partitions + e]
  if not redis.call('SET', seen, '1', 'NX', 'EX', ttl) then
    out[e] = 0
  else
    local at, k = starts[e], sizes[e]
    local partition, conversation = 0, ''
    if k > 0 then
      local value
      for i = 0, k - 1 do
        value = known[ARGV[at + 2 + 2 * i]]
        if value then
          break
        end
      end
      if not value then
        value = ARGV[at + 3] .. ':' .. ARGV[at + 2]
      end
      local sep = string.find(value, ':', 1, true)
      partition = tonumber(string.sub(value, 1, sep - 1))
      conversation = string.sub(value, sep + 1)
      -- The partition count may have changed since the alias was learned: stay in range.
      if partition >= partitions then
        partition = partition % partitions
        value = partition .. ':' .. conversation
      end
      -- Learn the ids not known yet: a later payload carrying only one of them still lands
      -- in the same conversation and partition. Known ids keep their first mapping.
      for i = 0, k - 1 do
        local id = ARGV[at + 2 + 2 * i]
        if not known[id] then
          known[id] = value
          redis.call('HSETNX', KEYS[1], id, value)
        end
      end
    end
    local stream = KEYS[2 + partition]
    local entry
    if capped then
      entry = redis.pcall('XADD', stream, 'MAXLEN', '~', maxlen, '*', 'e', ARGV[at], 'c', conversation)
    else
      entry = redis.pcall('XADD', stream, '*', 'e', ARGV[at], 'c', conversation)
    end
    if type(entry) == 'table' and entry.err then
      redis.call('DEL', seen)
      out[e] = entry
    else
      out[e] = {partition, conversation, entry}
    end
  end
end
return out
