-- outbox_status.lua: a status webhook carried our outbox key in biz_opaque_callback_data:
-- the reply was sent, even if its sender crashed before recording it.
--
-- KEYS[1]  idempotency key (keys.sent(ch, outbox_key))
-- ARGV[1]  "sent:<message id>"
-- ARGV[2]  TTL in ms
--
-- Returns 1 when the key changed (it was pending, or unknown), 0 when it already said sent.

local v = redis.call('GET', KEYS[1])
if v and string.sub(v, 1, 5) == 'sent:' then
  return 0
end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return 1
