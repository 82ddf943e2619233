-- outbox_release.lua: a send attempt failed and will be tried again later: give the claim up
-- (only our own: a marker that changed meanwhile is someone else's, or a status's `sent:`).
--
-- KEYS[1]  idempotency key (keys.sent(ch, outbox_key))
-- ARGV[1]  our pending marker
--
-- Returns 1 when the claim was released, 0 when the key held something else.

if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('DEL', KEYS[1])
  return 1
end
return 0
