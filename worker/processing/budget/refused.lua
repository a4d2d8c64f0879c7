-- A 429: the tenant's calls wait out its Retry-After, fleet-wide: its next call is due no sooner
-- than then, and the one after an interval later (one call first, not a storm). Without a
-- configured rate, a rate is learned: at the first 429, what the reporting worker saw answered
-- in the last second times the decrease; at the first 429 of each later pause, the learned rate
-- times the decrease (429s of calls sent before the pause was known do not count again); never
-- below the least. It lasts `ttl` after the last 429.
-- KEYS: tat, learned rate (a hash: r, until) of the tenant.
-- ARGV: Retry-After in microseconds, the configured rate (0: none, learn), the calls a second
-- the worker saw answered, the decrease factor, the least rate, ttl in milliseconds.
-- Returns the learned rate (a string), or false when a rate is configured.
local clock = redis.call('time')
local now = tonumber(clock[1]) * 1000000 + tonumber(clock[2])
local tat_key, rate_key = KEYS[1], KEYS[2]
local until_ = now + tonumber(ARGV[1])
local configured = tonumber(ARGV[2])
local observed, decrease, least, ttl =
  tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5]), tonumber(ARGV[6])
local tat = tonumber(redis.call('get', tat_key)) or now
if tat < until_ then
  redis.call('set', tat_key, string.format('%.0f', until_), 'PX', math.ceil((until_ - now) / 1000) + 1000)
end
if configured ~= 0 then
  return false
end
local learned = redis.call('hmget', rate_key, 'r', 'until')
local rate, paused_until = tonumber(learned[1]), tonumber(learned[2])
if not rate then
  rate = math.max(least, observed * decrease)
elseif now >= paused_until then
  rate = math.max(least, rate * decrease)
end
local rate_text = string.format('%.6f', rate)
redis.call('hset', rate_key, 'r', rate_text, 'until', string.format('%.0f', until_))
redis.call('pexpire', rate_key, ttl)
return rate_text
