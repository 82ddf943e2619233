-- out_settle.lua: the head of a lane left it, sent or failed for good.
--
-- KEYS[1] lane   KEYS[2] record   KEYS[3] queued   KEYS[4] busy   KEYS[5] owner
-- KEYS[6] idempotency marker (keys.sent)   KEYS[7] wamid index (keys.sent_message)
-- KEYS[8] audit stream   KEYS[9] broadcast hash (counts)
-- ARGV[1] head JSON as read (unused: matched by id)   ARGV[2] message id   ARGV[3] customer   ARGV[4] grant token
-- ARGV[5] now ms   ARGV[6] lease ms   ARGV[7] record TTL ms   ARGV[8] 'sent' | 'failed'
-- ARGV[9] wamid (sent) or error code (failed)   ARGV[10] error text   ARGV[11] type
-- ARGV[12] 1 when the message counts for the wamid index (not a read receipt)
-- ARGV[13] audit stream cap (MAXLEN ~), 0 = none
-- ARGV[14] '1' when the message belongs to the broadcast KEYS[9]
--
-- Not fenced by the grant: what the provider answered is true whoever records it. The lane
-- head is popped only if it is still this message (same id: a takeover may have bumped its
-- attempt count since), so settling twice pops once.
-- Returns 1 when the head was popped now, 0 when it had gone already.

local now = tonumber(ARGV[5])
local counter = nil
if ARGV[14] == '1' then
  counter = KEYS[9]
end
local popped = 0
if head_id(redis.call('LINDEX', KEYS[1], 0)) == ARGV[2] then
  redis.call('LPOP', KEYS[1])
  popped = 1
end
redis.call('ZREM', KEYS[3], ARGV[2])
local known = redis.call('EXISTS', KEYS[2]) == 1
if ARGV[8] == 'sent' then
  redis.call('SET', KEYS[6], 'sent:' .. ARGV[9], 'PX', ARGV[7])
  if ARGV[12] == '1' then
    redis.call('SET', KEYS[7], ARGV[2] .. '\n' .. ARGV[3], 'PX', ARGV[7])
  end
  if known then
    if not redis.call('HGET', KEYS[2], 'wamid') then
      redis.call('HSET', KEYS[2], 'wamid', ARGV[9])
    end
    move(KEYS[2], 'sent', now, counter)
  end
elseif known and move(KEYS[2], ARGV[8], now, counter) then
  redis.call('HSET', KEYS[2], 'ecode', ARGV[9], 'err', ARGV[10])
end
if redis.call('HGET', KEYS[5], ARGV[3]) == ARGV[4] then
  redis.call('ZADD', KEYS[4], 'XX', now + tonumber(ARGV[6]), ARGV[3])
end
if popped == 1 then
  -- The audit entry: outcome "sent" with the message id, or the failure code with the error.
  local entry = {'key', ARGV[2], 'to', ARGV[3], 'type', ARGV[11], 'outcome', ARGV[9], 'at', ARGV[5]}
  if ARGV[8] == 'sent' then
    entry[8] = 'sent'
    entry[#entry + 1] = 'message_id'
    entry[#entry + 1] = ARGV[9]
  else
    entry[#entry + 1] = 'error'
    entry[#entry + 1] = ARGV[10]
  end
  if tonumber(ARGV[13]) > 0 then
    redis.call('XADD', KEYS[8], 'MAXLEN', '~', ARGV[13], '*', unpack(entry))
  else
    redis.call('XADD', KEYS[8], '*', unpack(entry))
  end
end
return popped
