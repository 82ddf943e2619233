-- out_submit.lua: queue one message sent through the API, once per Idempotency-Key.
--
-- KEYS[1] idempotency key (keys.out_idempotency; unused when ARGV[1] is '0')
-- KEYS[2] lane   KEYS[3] ready   KEYS[4] busy   KEYS[5] queued   KEYS[6] index
-- KEYS[7] record of the message
-- ARGV[1] '1' when an Idempotency-Key was given   ARGV[2] hash of the request body
-- ARGV[3] message id   ARGV[4] lane JSON   ARGV[5] type   ARGV[6] customer
-- ARGV[7] now ms   ARGV[8] record TTL ms   ARGV[9] idempotency TTL ms
--
-- Returns {'queued', id}, {'existing', first id} (same key, same body: nothing queued) or
-- {'conflict', first id} (same key, another body: nothing queued).

if ARGV[1] == '1' then
  local seen = redis.call('GET', KEYS[1])
  if seen then
    local hash, id = string.match(seen, '^([^\n]*)\n(.*)$')
    if hash == ARGV[2] then
      return {'existing', id}
    end
    return {'conflict', id or ''}
  end
  redis.call('SET', KEYS[1], ARGV[2] .. '\n' .. ARGV[3], 'PX', ARGV[9])
end
local k = {lane = KEYS[2], ready = KEYS[3], busy = KEYS[4], queued = KEYS[5], index = KEYS[6]}
push(k, {KEYS[7]}, {{ARGV[3], ARGV[4], ARGV[5]}}, ARGV[6], tonumber(ARGV[7]), tonumber(ARGV[8]))
return {'queued', ARGV[3]}
