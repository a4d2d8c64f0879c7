-- Whether a lock is held by a worker whose presence record is gone (presence.py): its token
-- names its owner ('<owner hex>.<random hex>'), and the owner renews its record while it lives
-- and cuts its own calls before the record can expire. A linger, or a token naming no owner,
-- is never abandoned. An empty prefix (a Redis Cluster: the record lies in another hash slot)
-- takes nothing over.
local function abandoned(holder, presence_prefix)
  if presence_prefix == '' then return false end
  local owner = string.match(holder, '^(%x+)%.%x+$')
  return owner ~= nil and redis.call('exists', presence_prefix .. owner) == 0
end

