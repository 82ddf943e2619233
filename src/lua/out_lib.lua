-- out_lib.lua: helpers shared by the outbound-queue scripts (prepended to each of them at
-- compile time; Redis scripts cannot call one another). No keys are built here.

-- Status ranks: queued 0 < sending 1 < sent 2 < delivered 3 < read 4; failed 5, skipped 6 (the
-- two ends that are not delivery).
local RANK = {queued = 0, sending = 1, sent = 2, delivered = 3, read = 4, failed = 5, skipped = 6}

-- May a record at `from` move to `to`? Forward only; `failed` or `skipped` after anything but
-- read, failed or skipped.
local function may_move(from, to)
  local f, t = RANK[from], RANK[to]
  if f == nil or t == nil then
    return false
  end
  local final = from == 'failed' or from == 'skipped'
  if to == 'failed' or to == 'skipped' then
    return from ~= 'read' and not final
  end
  return not final and t > f
end

-- Moves the record at `rec` to `status` at `at` if that is a move forward; appends the
-- history ("status:at,…"). `counter` (a broadcast's hash, or nil) counts records per status
-- in fields `c:<status>`. Returns true when it moved.
local function move(rec, status, at, counter)
  local from = redis.call('HGET', rec, 'st')
  if not from or not may_move(from, status) then
    return false
  end
  local hist = redis.call('HGET', rec, 'hist') or ''
  if hist ~= '' then
    hist = hist .. ','
  end
  redis.call('HSET', rec, 'st', status, 'hist', hist .. status .. ':' .. at)
  -- A late status of a broadcast that expired must not bring its hash back.
  if counter and redis.call('EXISTS', counter) == 1 then
    redis.call('HINCRBY', counter, 'c:' .. from, -1)
    redis.call('HINCRBY', counter, 'c:' .. status, 1)
  end
  return true
end

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

-- The message id (outbox key) of a lane entry (JSON of a QueuedMessage), or nil.
local function head_id(json)
  if not json then
    return nil
  end
  local ok, decoded = pcall(cjson.decode, json)
  if not ok or type(decoded) ~= 'table' or type(decoded.msg) ~= 'table' then
    return nil
  end
  return decoded.msg.outbox_key
end
