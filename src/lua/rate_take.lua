-- rate_take.lua: reserve one send slot in every limit that applies to a send, atomically, for
-- all worker processes of a deployment.
--
-- Each limit is a token bucket written as GCRA ("generic cell rate algorithm"): the key holds
-- the bucket's theoretical arrival time TAT in microseconds; a send at time t fits when
-- t >= TAT - (burst - 1) * interval, and then TAT becomes max(TAT, t) + interval. That is a
-- bucket of `burst` tokens refilled one per `interval`.
--
-- Two kinds of limit:
--   gate  (per contact): must fit at the earliest send time, else nothing is reserved and the
--         caller comes back when it fits. A gate never books a slot in the future, so one chat
--         waiting for its pair gap never holds up the channel's other chats.
--   queue (per channel): may book a slot in the future; all queue limits agree on one time, so
--         waiters across processes line up instead of stampeding.
--
-- KEYS[1..N]  one key per limit: keys.send_rate(ch) [, keys.pair_rate(ch, contact)]
--             [, keys.send_cap(ch)]
-- ARGV[1]     now, microseconds
-- ARGV[2]     earliest send time, microseconds (now + pacing jitter)
-- ARGV[3]     longest acceptable wait from now, microseconds
-- ARGV[4..]   per key, in KEYS order: interval (microseconds per token), burst (tokens),
--             kind (0 = gate, 1 = queue)
--
-- Returns {1, wait_us, 0}: reserved in every bucket; send at now + wait_us.
--         {0, wait_us, 1}: nothing reserved; a per-contact gate is closed for wait_us.
--         {0, wait_us, 0}: nothing reserved; the channel slot would be further away than
--                          ARGV[3]: ask again in wait_us.
-- Keys expire one second after their TAT has passed (an idle bucket is a full bucket).

local now = tonumber(ARGV[1])
local earliest = tonumber(ARGV[2])
local max_wait = tonumber(ARGV[3])

local tats = {}
local gate_wait = 0
local t = earliest
for i = 1, #KEYS do
  local interval = tonumber(ARGV[1 + 3 * i])
  local burst = tonumber(ARGV[2 + 3 * i])
  local kind = ARGV[3 + 3 * i]
  local tat = tonumber(redis.call('GET', KEYS[i]) or '0') or 0
  if tat < now then
    tat = now
  end
  tats[i] = tat
  local allowed_at = tat - (burst - 1) * interval
  if kind == '0' then
    if allowed_at > earliest and allowed_at - now > gate_wait then
      gate_wait = allowed_at - now
    end
  elseif allowed_at > t then
    t = allowed_at
  end
end

if gate_wait > 0 then
  return {0, gate_wait, 1}
end
local wait = t - now
if wait > max_wait then
  return {0, wait, 0}
end

for i = 1, #KEYS do
  local interval = tonumber(ARGV[1 + 3 * i])
  local tat = tats[i]
  if tat < t then
    tat = t
  end
  local new_tat = tat + interval
  local ttl_ms = math.ceil((new_tat - now) / 1000) + 1000
  redis.call('SET', KEYS[i], string.format('%.0f', new_tat), 'PX', ttl_ms)
end
return {1, wait, 0}
