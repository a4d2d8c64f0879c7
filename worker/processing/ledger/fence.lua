-- Right before calls: is each relationship still its event's? If its lock still holds the
-- event's token, it is extended to cover the whole call (never shortened: a linger may already
-- outlast it); if it expired and nobody took it, or its holder's presence is gone
-- (presence.lua), it is taken anew, as acquiring would.
-- KEYS: lock, applied of each relationship. ARGV: the presence records' key prefix, then token,
-- lease ms of each, in the same order.
-- Returns per relationship 0 when another holds the lock, else {1, the applied record or
-- false}: the verdict is judged again by it, since the ledger may have moved on while the lock
-- was free.
local replies = {}
for i = 1, #KEYS / 2 do
  local lock, applied = KEYS[2 * i - 1], KEYS[2 * i]
  local token, lease = ARGV[2 * i], ARGV[2 * i + 1]
  local holder = redis.call('get', lock)
  if not holder or (holder ~= token and abandoned(holder, ARGV[1])) then
    redis.call('set', lock, token, 'PX', lease)
    replies[i] = {1, redis.call('get', applied)}
  elseif holder ~= token then
    replies[i] = 0
  else
    if redis.call('pttl', lock) < tonumber(lease) then
      redis.call('pexpire', lock, lease)
    end
    replies[i] = {1, redis.call('get', applied)}
  end
end
return replies
