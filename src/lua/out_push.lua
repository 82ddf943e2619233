-- out_push.lua: queue messages to one customer (no inbound event behind them).
--
-- KEYS[1] lane   KEYS[2] ready   KEYS[3] busy   KEYS[4] queued   KEYS[5] index
-- KEYS[6..] record key of each message, in order
-- ARGV[1] customer   ARGV[2] now ms   ARGV[3] record TTL ms
-- ARGV[4..] per message: id, lane JSON, type
--
-- Returns how many messages were new.

local k = {lane = KEYS[1], ready = KEYS[2], busy = KEYS[3], queued = KEYS[4], index = KEYS[5]}
local recs, msgs = {}, {}
for i = 6, #KEYS do
  local a = 4 + (i - 6) * 3
  recs[#recs + 1] = KEYS[i]
  msgs[#msgs + 1] = {ARGV[a], ARGV[a + 1], ARGV[a + 2]}
end
return push(k, recs, msgs, ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3]))
