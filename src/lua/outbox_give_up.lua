-- outbox_give_up.lua: a message failed for good: its key says so (`failed:<code>`), so a
-- sender that takes its lane over after a crash gives it up too instead of sending it again.
-- Only our own claim is replaced (a status's `sent:` or another sender's claim stays).
--
-- KEYS[1]  idempotency key (keys.sent(ch, outbox_key))
-- ARGV[1]  our pending marker   ARGV[2] the failure code   ARGV[3] TTL ms
--
-- Returns 1 when written, 0 when the key held something else.

if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('SET', KEYS[1], 'failed:' .. ARGV[2], 'PX', ARGV[3])
  return 1
end
return 0
