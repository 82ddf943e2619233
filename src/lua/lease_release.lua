-- lease_release.lua: owner-checked delete (a plain DEL could drop a lease that expired and was
-- taken by another worker in the meantime).
--
-- KEYS[1]  the partition lease (keys.lease(ch, p))
-- ARGV[1]  the holder's value "<owner>:<token>"
--
-- Returns 1 when released, 0 when it was not ours (any more).

if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('DEL', KEYS[1])
  return 1
end
return 0
