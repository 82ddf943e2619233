-- bc_create.lua: make a broadcast visible, whole: its recipients were appended to a staging
-- list first (so a failure half-way leaves nothing a feeder could see); this renames the
-- list into place and writes the broadcast in one step.
--
-- KEYS[1] broadcast hash   KEYS[2] recipients list   KEYS[3] staging list   KEYS[4] running set
-- ARGV[1] name   ARGV[2] message JSON   ARGV[3] recipients stored   ARGV[4] skipped at creation
-- (listed twice)   ARGV[5] now ms   ARGV[6] TTL ms of the broadcast   ARGV[7] broadcast id
--
-- Returns 1, or 0 when a broadcast with this id exists already (nothing written).

if redis.call('EXISTS', KEYS[1]) == 1 then
  return 0
end
local total = tonumber(ARGV[3])
if total > 0 then
  redis.call('RENAME', KEYS[3], KEYS[2])
  redis.call('PEXPIRE', KEYS[2], ARGV[6])
end
redis.call('HSET', KEYS[1], 'name', ARGV[1], 'message', ARGV[2], 'size', total,
  'total', total + tonumber(ARGV[4]),
  'fed', 0, 'state', 'running', 'created', ARGV[5], 'c:skipped', ARGV[4], 'c:queued', 0)
redis.call('PEXPIRE', KEYS[1], ARGV[6])
redis.call('ZADD', KEYS[4], ARGV[5], ARGV[7])
return 1
