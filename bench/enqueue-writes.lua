-- enqueue-writes.lua (bench/enqueue-cost.sh only): the two writes enqueue.lua does per event,
-- SET NX EX of the dedupe marker and XADD of the event, with none of its logic (no aliases, no
-- replies). Same KEYS and ARGV layout as src/lua/enqueue.lua with k = 1 per event.
local partitions = tonumber(ARGV[3])
local count = #KEYS - 1 - partitions
local a = 4
for e = 1, count do
  redis.call('SET', KEYS[1 + partitions + e], '1', 'NX', 'EX', ARGV[1])
  redis.call('XADD', KEYS[2 + tonumber(ARGV[a + 3])], 'MAXLEN', '~', ARGV[2], '*',
    'e', ARGV[a], 'c', ARGV[a + 2])
  a = a + 4
end
return count
