-- outbox_fail.lua: a send failed for good: release its claim and log the outcome.
--
-- KEYS[1]  idempotency key (keys.sent(ch, outbox_key))
-- KEYS[2]  audit stream of the channel (keys.outbox(ch))
-- ARGV[1]  our pending marker: the key is deleted only while it still holds it, so a later
--          retry of the event sends again instead of waiting for a status that never comes
-- ARGV[2]  approximate cap of the audit stream (MAXLEN ~), 0 = none
-- ARGV[3..] audit entry, field/value pairs
--
-- Returns 1 when the claim was released, 0 when the key held something else.

local released = 0
if ARGV[1] ~= '' and redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('DEL', KEYS[1])
  released = 1
end
local entry = {}
for i = 3, #ARGV do
  entry[#entry + 1] = ARGV[i]
end
if tonumber(ARGV[2]) > 0 then
  redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[2], '*', unpack(entry))
else
  redis.call('XADD', KEYS[2], '*', unpack(entry))
end
return released
