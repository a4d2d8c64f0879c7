-- Right before a call: is the relationship still this event's? If its lock still holds the
-- event's token, it is extended to cover the whole call (never shortened: a linger may already
-- outlast it); if it expired and nobody took it, it is taken anew, as acquiring would.
-- KEYS: lock, applied. ARGV: token, lease ms.
-- Returns 0 when another holds the lock, else {1, the applied order key or false}: the verdict
-- is judged again by it, since the ledger may have moved on while the lock was free.
local holder = redis.call('get', KEYS[1])
if not holder then
  redis.call('set', KEYS[1], ARGV[1], 'PX', ARGV[2])
elseif holder ~= ARGV[1] then
  return 0
elseif redis.call('pttl', KEYS[1]) < tonumber(ARGV[2]) then
  redis.call('pexpire', KEYS[1], ARGV[2])
end
return {1, redis.call('get', KEYS[2])}
