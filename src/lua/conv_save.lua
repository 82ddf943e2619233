-- Fenced, versioned save of one conversation state.
--
-- KEYS[1]  lease key of the conversation's partition   (value "<owner>:<token>")
-- KEYS[2]  conversation key                            (hash: v = version, s = state JSON)
-- ARGV[1]  lease value the writer holds, "<owner>:<token>"
-- ARGV[2]  version the writer loaded (0 when there was no state)
-- ARGV[3]  state JSON, already carrying version ARGV[2] + 1
-- ARGV[4]  TTL in milliseconds (0 = no expiry)
--
-- Returns {1, new_version} when written,
--         {0, 0}           when the lease is held by someone else or by nobody (fenced),
--         {2, stored}      when the stored version is not ARGV[2] (written from a stale copy).
-- Nothing is written unless the result is 1.

if redis.call('GET', KEYS[1]) ~= ARGV[1] then
  return {0, 0}
end

local stored = tonumber(redis.call('HGET', KEYS[2], 'v') or '0')
local expected = tonumber(ARGV[2])
if stored ~= expected then
  return {2, stored}
end

local version = expected + 1
redis.call('HSET', KEYS[2], 'v', version, 's', ARGV[3])
local ttl = tonumber(ARGV[4])
if ttl > 0 then
  redis.call('PEXPIRE', KEYS[2], ttl)
else
  redis.call('PERSIST', KEYS[2])
end
return {1, version}
