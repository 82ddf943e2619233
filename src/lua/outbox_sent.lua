-- outbox_sent.lua: record that one outbound reply was sent, and log it.
--
-- KEYS[1]  idempotency key (keys.sent(ch, outbox_key))
-- KEYS[2]  message id -> reply map (keys.sent_message(ch, message_id))
-- KEYS[3]  audit stream of the channel (keys.outbox(ch))
-- ARGV[1]  "sent:<message id>"
-- ARGV[2]  TTL in ms of both keys
-- ARGV[3]  "<outbox key>\n<conversation>" for KEYS[2], "" to skip it (read receipts)
-- ARGV[4]  approximate cap of the audit stream (MAXLEN ~), 0 = none
-- ARGV[5..] audit entry, field/value pairs
--
-- Returns the audit entry id.

redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
if ARGV[3] ~= '' then
  redis.call('SET', KEYS[2], ARGV[3], 'PX', ARGV[2])
end
local entry = {}
for i = 5, #ARGV do
  entry[#entry + 1] = ARGV[i]
end
if tonumber(ARGV[4]) > 0 then
  return redis.call('XADD', KEYS[3], 'MAXLEN', '~', ARGV[4], '*', unpack(entry))
end
return redis.call('XADD', KEYS[3], '*', unpack(entry))
