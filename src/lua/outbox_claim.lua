-- outbox_claim.lua: claim the idempotency key of one outbound reply before sending it.
--
-- KEYS[1]  idempotency key (keys.sent(ch, outbox_key)); value "pending:<ms>:<token>" while a
--          send is in flight, "sent:<message id>" once sent (or once a status echoed the key),
--          "failed:<code>" once given up
-- ARGV[1]  our marker "pending:<now ms>:<token>"
-- ARGV[2]  TTL in ms
-- ARGV[3]  "" to claim only a free key; else the pending marker we saw and take over (the
--          previous sender may have crashed): the key is claimed only if it still holds it
--
-- Returns {"claimed", ""}, {"sent", "<message id>"}, {"failed", "<code>"} (given up for good)
-- or {"pending", "<current marker>"}.

local v = redis.call('GET', KEYS[1])
if v and string.sub(v, 1, 5) == 'sent:' then
  return {'sent', string.sub(v, 6)}
end
if v and string.sub(v, 1, 7) == 'failed:' then
  return {'failed', string.sub(v, 8)}
end
if (not v and ARGV[3] == '') or (v and v == ARGV[3]) then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return {'claimed', ''}
end
if not v then
  -- Taking over a marker that has vanished (expired): the key is free, claim it.
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return {'claimed', ''}
end
return {'pending', v}
