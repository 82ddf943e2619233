-- claim.lua: hand every not-yet-acknowledged entry of a partition to the lease holder, in
-- entry-id order (a previous owner's, or our own from an earlier read that was not acked).
--
-- KEYS[1]  the partition lease  (keys.lease(ch, p))
-- KEYS[2]  the partition stream (keys.stream(ch, p))
-- ARGV[1]  the holder's value "<owner>:<token>"
-- ARGV[2]  consumer group (keys::GROUP)
-- ARGV[3]  consumer name
-- ARGV[4]  max entries
--
-- Returns an array of {entry id, payload (field e), conversation (field c), deliveries}.
-- Errors: LEASELOST when the lease is not ours; NOGROUP (from Redis) when the group or stream
-- is gone, e.g. after a restart without persistence (the caller recreates it and retries).
-- min-idle 0 is safe because the lease guarantees the previous owner is gone.

if redis.call('GET', KEYS[1]) ~= ARGV[1] then
  return redis.error_reply('LEASELOST lease ' .. KEYS[1] .. ' is not held by ' .. ARGV[1])
end
local res = redis.call('XAUTOCLAIM', KEYS[2], ARGV[2], ARGV[3], 0, '0-0', 'COUNT', tonumber(ARGV[4]))
local claimed = res[2]
local out = {}
if #claimed == 0 then
  return out
end
local deliveries = {}
local pending = redis.call('XPENDING', KEYS[2], ARGV[2], claimed[1][1], claimed[#claimed][1],
  #claimed, ARGV[3])
for _, p in ipairs(pending) do
  deliveries[p[1]] = p[4]
end
for _, entry in ipairs(claimed) do
  local e, c = '', ''
  local fields = entry[2]
  if fields then
    for i = 1, #fields, 2 do
      if fields[i] == 'e' then
        e = fields[i + 1]
      elseif fields[i] == 'c' then
        c = fields[i + 1]
      end
    end
  end
  out[#out + 1] = {entry[1], e, c, deliveries[entry[1]] or 1}
end
return out
