-- lib_move.lua: a helper shared by outbound-queue scripts, prepended at compile time to the
-- scripts that use it (Redis scripts cannot call one another; each script carries only the
-- helpers it needs, so a call defines nothing it does not run). No keys are built here.

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
