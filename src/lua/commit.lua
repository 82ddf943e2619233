-- commit.lua: everything one handled event changes, in one fenced step: the conversation
-- state (version-checked), its window timers (old ones disarmed, new ones armed) and the
-- replies the handler produced (queued in the customer's outbound lane, once per outbox key).
-- Either all of it is written or none.
--
-- KEYS[1] partition lease   KEYS[2] conversation   KEYS[3] partition timers
-- with replies only (ARGV[10] > 0; then `lib_push.lua` is prepended):
-- KEYS[4] lane   KEYS[5] ready   KEYS[6] busy   KEYS[7] queued   KEYS[8] index
-- KEYS[9..] record key of each reply, in order
-- ARGV[1] lease value "<owner>:<token>"   ARGV[2] version the state was loaded at
-- ARGV[3] state JSON with version ARGV[2] + 1 ('' = state unchanged)   ARGV[4] state TTL ms
-- ARGV[5] now ms   ARGV[6] record TTL ms   ARGV[7] customer
-- ARGV[8] timers to disarm (n)   ARGV[9] timers to arm (m)   ARGV[10] replies (r)
-- ARGV[11..] n members, then m (member, due ms) pairs, then r (id, lane JSON, type) triples
--
-- Returns {1, version} when written (version unchanged when the state was),
--         {0, 0} when the lease is not ours (fenced), {2, stored} on a version conflict.

if redis.call('GET', KEYS[1]) ~= ARGV[1] then
  return {0, 0}
end
local version = tonumber(ARGV[2])
if ARGV[3] ~= '' then
  local stored = tonumber(redis.call('HGET', KEYS[2], 'v') or '0')
  if stored ~= version then
    return {2, stored}
  end
  version = version + 1
  redis.call('HSET', KEYS[2], 'v', version, 's', ARGV[3])
  local ttl = tonumber(ARGV[4])
  if ttl > 0 then
    redis.call('PEXPIRE', KEYS[2], ttl)
  else
    redis.call('PERSIST', KEYS[2])
  end
end

local n, m, r = tonumber(ARGV[8]), tonumber(ARGV[9]), tonumber(ARGV[10])
local a = 11
for _ = 1, n do
  redis.call('ZREM', KEYS[3], ARGV[a])
  a = a + 1
end
for _ = 1, m do
  redis.call('ZADD', KEYS[3], ARGV[a + 1], ARGV[a])
  a = a + 2
end
if r > 0 then
  local recs, msgs = {}, {}
  for i = 1, r do
    recs[i] = KEYS[8 + i]
    msgs[i] = {ARGV[a], ARGV[a + 1], ARGV[a + 2]}
    a = a + 3
  end
  local k = {lane = KEYS[4], ready = KEYS[5], busy = KEYS[6], queued = KEYS[7], index = KEYS[8]}
  push(k, recs, msgs, ARGV[7], tonumber(ARGV[5]), tonumber(ARGV[6]))
end
return {1, version}
