-- rate_take.lua: reserve one send slot in every limit that applies to a send, atomically, for
-- all worker processes of a deployment.
--
-- Each limit is a token bucket written as GCRA ("generic cell rate algorithm"): the key holds
-- the bucket's theoretical arrival time TAT in microseconds; a send at time t fits when
-- t >= TAT - (burst - 1) * interval, and then TAT becomes max(TAT, t) + interval. That is a
-- bucket of `burst` tokens refilled one per `interval`, but it can reserve a slot in the
-- future, so several limits agree on one send time and waiters do not stampede.
--
-- KEYS[1..N]  one key per limit: keys.send_rate(ch) [, keys.pair_rate(ch, contact)]
--             [, keys.send_cap(ch)]
-- ARGV[1]     now, microseconds
-- ARGV[2]     earliest send time, microseconds (now + pacing jitter)
-- ARGV[3]     longest acceptable wait from now, microseconds
-- ARGV[4..]   per key, in KEYS order: interval (microseconds per token), burst (tokens)
--
-- Returns {1, wait_us}: reserved in every bucket; send at now + wait_us.
--         {0, wait_us}: the wait would be longer than ARGV[3]; nothing was reserved.
-- Keys expire one second after their TAT has passed (an idle bucket is a full bucket).

local now = tonumber(ARGV[1])
local t = tonumber(ARGV[2])
local max_wait = tonumber(ARGV[3])

local tats = {}
for i = 1, #KEYS do
  local interval = tonumber(ARGV[2 + 2 * i])
  local burst = tonumber(ARGV[3 + 2 * i])
  local tat = tonumber(redis.call('GET', KEYS[i]) or '0') or 0
  if tat < now then
    tat = now
  end
  tats[i] = tat
  local allowed_at = tat - (burst - 1) * interval
  if allowed_at > t then
    t = allowed_at
  end
end

local wait = t - now
if wait > max_wait then
  return {0, wait}
end

for i = 1, #KEYS do
  local interval = tonumber(ARGV[2 + 2 * i])
  local tat = tats[i]
  if tat < t then
    tat = t
  end
  local new_tat = tat + interval
  local ttl_ms = math.ceil((new_tat - now) / 1000) + 1000
  redis.call('SET', KEYS[i], string.format('%.0f', new_tat), 'PX', ttl_ms)
end
return {1, wait}
