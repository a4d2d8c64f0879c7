-- Takes the locks of many events at once: KEYS holds (lock, applied) per event, in order.
-- ARGV: lock ttl ms, the presence records' key prefix (presence.lua), then (token, this event's
-- linger value, inherited lock token or '') per event. The lock of a worker whose presence is
-- gone is taken over: that worker's calls are over (presence.lua). A lock lingering for this
-- very event may be taken over too: its retry cannot overtake itself. So may the lock an
-- earlier attempt of this event could not release (Redis went away before it left): that
-- attempt's call has ended, and only this event could be harmed by it.
-- And so may a lock already under this very token: a retry of this call whose first try ran
-- and lost its reply (a token is drawn afresh for each call, never reused by another).
-- Returns per event 0 when busy, else {remaining linger ms, the applied order key or false}.
local taken = {}
for i = 1, #KEYS / 2 do
  local lock, token = KEYS[2 * i - 1], ARGV[3 * i]
  local linger_value, inherited = ARGV[3 * i + 1], ARGV[3 * i + 2]
  local holder = redis.call('get', lock)
  local lingering = 0
  if holder and holder == linger_value then lingering = redis.call('pttl', lock) end
  if holder and holder ~= linger_value and holder ~= inherited and holder ~= token
      and not abandoned(holder, ARGV[2]) then
    taken[i] = 0
  else
    redis.call('set', lock, token, 'PX', ARGV[1])
    taken[i] = {lingering, redis.call('get', KEYS[2 * i])}
  end
end
return taken
