-- lease_acquire.lua: take a free partition lease with a new fencing token.
--
-- KEYS[1]  the partition lease   (keys.lease(ch, p)), value "<owner>:<token>"
-- KEYS[2]  the fencing counter   (keys.fence(ch, p))
-- ARGV[1]  owner (unique per worker process)
-- ARGV[2]  lease time to live in ms
--
-- Returns the token (an integer that only ever grows per partition), or false (nil) when the
-- lease is held (by anyone, this owner included: a holder renews instead).
-- The token is taken only when the lease is free, so tokens are not burnt by contention.

if redis.call('EXISTS', KEYS[1]) == 1 then
  return false
end
local token = redis.call('INCR', KEYS[2])
redis.call('SET', KEYS[1], ARGV[1] .. ':' .. token, 'PX', tonumber(ARGV[2]))
return token
