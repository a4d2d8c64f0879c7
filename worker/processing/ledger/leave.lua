-- Leaves the relationships of many events at once: KEYS holds (lock, applied) per event, in order.
-- ARGV: ledger ttl s, then (token, order key to record or '', linger ms, linger value) per event.
-- The order key is written only if newer than the stored one, compared byte by byte as Python
-- compares it (Lua's own string order follows the server's locale), and only while the lock is
-- still this event's: once it expired, another event may have read the ledger without this one
-- and be calling, so recording this call would hide that the other's may land after it.
-- Returns per event 1 if the lock was still its own, else 0.
local kept = {}
for i = 1, #KEYS / 2 do
  local lock, applied = KEYS[2 * i - 1], KEYS[2 * i]
  local token, new = ARGV[4 * i - 2], ARGV[4 * i - 1]
  local linger_ms, linger_value = ARGV[4 * i], ARGV[4 * i + 1]
  local own = redis.call('get', lock) == token
  if own and new ~= '' then
    local current = redis.call('get', applied)
    local newer = not current
    if current then
      local decided = false
      for j = 1, math.min(#new, #current) do
        local a, b = string.byte(new, j), string.byte(current, j)
        if a ~= b then newer = a > b; decided = true; break end
      end
      if not decided then newer = #new > #current end
    end
    if newer then redis.call('set', applied, new, 'EX', ARGV[1]) end
  end
  if own then
    if tonumber(linger_ms) > 0 then
      redis.call('set', lock, linger_value, 'PX', linger_ms)
    else
      redis.call('del', lock)
    end
  end
  kept[i] = own and 1 or 0
end
return kept
