-- bc_feed.lua: move the next recipients of a running broadcast into their outbound lanes.
-- Feeders in every process may race: the recipient cursor (`fed`) is compared and advanced
-- here, so each recipient is fed by one of them; and each message id is queued once anyway.
--
-- KEYS[1] broadcast hash   KEYS[2] ready   KEYS[3] busy   KEYS[4] queued   KEYS[5] index
-- KEYS[6] recipients list
-- KEYS[7..] per recipient: its lane, then its message's record
-- ARGV[1] the cursor the caller read   ARGV[2] now ms   ARGV[3] record TTL ms
-- ARGV[4..] per recipient: customer, message id, lane JSON, type
--
-- Returns how many were queued, or -1 when the cursor moved or the broadcast is not running.

if redis.call('HGET', KEYS[1], 'state') ~= 'running'
    or redis.call('HGET', KEYS[1], 'fed') ~= ARGV[1] then
  return -1
end
local now, ttl = tonumber(ARGV[2]), tonumber(ARGV[3])
local n = (#KEYS - 6) / 2
local added = 0
for i = 1, n do
  local a = 4 + (i - 1) * 4
  local k = {lane = KEYS[5 + 2 * i], ready = KEYS[2], busy = KEYS[3], queued = KEYS[4],
    index = KEYS[5]}
  added = added + push(k, {KEYS[6 + 2 * i]}, {{ARGV[a + 1], ARGV[a + 2], ARGV[a + 3]}},
    ARGV[a], now, ttl)
end
redis.call('HINCRBY', KEYS[1], 'fed', n)
redis.call('HINCRBY', KEYS[1], 'c:queued', added)
-- A running broadcast lives as long as it runs: its TTL counts from its last feed.
redis.call('PEXPIRE', KEYS[1], ttl)
redis.call('PEXPIRE', KEYS[6], ttl)
return added
