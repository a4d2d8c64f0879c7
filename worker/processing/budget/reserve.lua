-- Right before calls: one reservation of the API's rate budget per call, by the generic cell
-- rate algorithm (GCRA) without burst. Each tenant keeps the moment its next call is due ("tat",
-- microseconds of Redis's clock, shared by the fleet); a call goes then, and its reservation
-- moves the moment on by one interval (1 / rate). A tenant may come more than once: its calls
-- are spaced one after the other.
-- KEYS: tat, learned rate (a hash: r, until) of each call's tenant.
-- ARGV: the configured rate in calls a second (0: none, use the learned one), the longest wait
-- in microseconds, the learned rate's increase in calls a second per second of calls.
-- Returns per call {1, wait} when reserved (microseconds to wait); {0, wait} when the wait would
-- exceed the longest (nothing reserved); {0, -1} when the tenant has no rate: none configured and
-- none learned (its learned rate expired).
local clock = redis.call('time')
local now = tonumber(clock[1]) * 1000000 + tonumber(clock[2])
local configured = tonumber(ARGV[1])
local longest = tonumber(ARGV[2])
local increase = tonumber(ARGV[3])
local replies = {}
for i = 1, #KEYS / 2 do
  local tat_key, rate_key = KEYS[2 * i - 1], KEYS[2 * i]
  local rate = configured
  if rate == 0 then
    rate = tonumber(redis.call('hget', rate_key, 'r'))
  end
  if not rate then
    replies[i] = {0, -1}
  else
    local tat = tonumber(redis.call('get', tat_key)) or now
    if tat < now then
      tat = now
    end
    local wait = tat - now
    if wait > longest then
      replies[i] = {0, math.floor(wait)}
    else
      local due = tat + 1000000 / rate
      redis.call('set', tat_key, string.format('%.0f', due), 'PX', math.ceil((due - now) / 1000) + 1000)
      if configured == 0 then
        -- Additive increase: a second of calls at the learned rate raises it by `increase`.
        redis.call('hset', rate_key, 'r', string.format('%.6f', rate + increase / rate))
      end
      replies[i] = {1, math.floor(wait)}
    end
  end
end
return replies
