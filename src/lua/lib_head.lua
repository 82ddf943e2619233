-- lib_head.lua: a helper shared by outbound-queue scripts, prepended at compile time to the
-- scripts that use it (Redis scripts cannot call one another; each script carries only the
-- helpers it needs, so a call defines nothing it does not run). No keys are built here.

-- The message id (outbox key) of a lane entry (JSON of a QueuedMessage), or nil.
local function head_id(json)
  if not json then
    return nil
  end
  local ok, decoded = pcall(cjson.decode, json)
  if not ok or type(decoded) ~= 'table' or type(decoded.msg) ~= 'table' then
    return nil
  end
  return decoded.msg.outbox_key
end
