-- lease_renew.lua: extend a lease only if it still carries our value.
--
-- KEYS[1]  the partition lease (keys.lease(ch, p))
-- ARGV[1]  the holder's value "<owner>:<token>"
-- ARGV[2]  new time to live in ms
--
-- Returns 1 when renewed, 0 when the lease expired or belongs to someone else.

if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[2]))
  return 1
end
return 0
