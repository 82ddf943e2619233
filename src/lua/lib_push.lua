-- lib_push.lua: a helper shared by outbound-queue scripts, prepended at compile time to the
-- scripts that use it (Redis scripts cannot call one another; each script carries only the
-- helpers it needs, so a call defines nothing it does not run). No keys are built here.

-- Queues messages for one customer. `k` holds the keys: lane, ready, busy, queued, index;
-- `recs[i]` the record key of message i; `msgs[i]` = {id, json, type}. Each id is queued once
-- (an existing record means it was queued before). Returns how many were new.
local function push(k, recs, msgs, customer, now, ttl)
  local added = 0
  for i = 1, #msgs do
    local m = msgs[i]
    if redis.call('EXISTS', recs[i]) == 0 then
      redis.call('HSET', recs[i], 'to', customer, 'type', m[3], 'st', 'queued',
        'created', now, 'hist', 'queued:' .. now)
      redis.call('PEXPIRE', recs[i], ttl)
      redis.call('RPUSH', k.lane, m[2])
      redis.call('ZADD', k.queued, now, m[1])
      redis.call('ZADD', k.index, now, m[1])
      added = added + 1
    end
  end
  if added > 0 then
    redis.call('ZREMRANGEBYSCORE', k.index, '-inf', '(' .. (now - ttl))
    if not redis.call('ZSCORE', k.busy, customer) then
      redis.call('ZADD', k.ready, 'NX', now, customer)
    end
  end
  return added
end
