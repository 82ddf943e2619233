-- replay_dead_letter.lua: put one dead letter back at the tail of its partition stream and
-- remove it from the dead-letter stream.
--
-- KEYS[1]  the dead-letter stream (keys.dead_letters(ch))
-- KEYS[2]  the partition stream   (keys.stream(ch, p)), p = the dead letter's partition field
-- ARGV[1]  dead-letter entry id
-- ARGV[2]  the partition the caller read from the dead letter (checked again here)
--
-- Returns the new entry id, or false (nil) when the dead letter is gone or its partition
-- changed (nothing written then).

local found = redis.call('XRANGE', KEYS[1], ARGV[1], ARGV[1])
if #found == 0 then
  return false
end
local fields = found[1][2]
local e, c, p = '', '', nil
for i = 1, #fields, 2 do
  if fields[i] == 'e' then
    e = fields[i + 1]
  elseif fields[i] == 'c' then
    c = fields[i + 1]
  elseif fields[i] == 'partition' then
    p = fields[i + 1]
  end
end
if p ~= ARGV[2] then
  return false
end
local id = redis.call('XADD', KEYS[2], '*', 'e', e, 'c', c)
redis.call('XDEL', KEYS[1], ARGV[1])
return id
