-- Leaves the relationships of many events at once: KEYS holds (lock, applied) per event, in order.
-- ARGV: ledger ttl s, then (token, record to write or '', linger ms, linger value) per event.
-- A record is the event's order key, alone or followed by NUL and a JSON payload (records.py).
-- It is written only if its order key is newer than the stored one's, compared byte by byte as
-- Python compares them (Lua's own string order follows the server's locale), and only while the
-- lock is still this event's: once it expired, another event may have read the ledger without
-- this one and be calling, so recording this call would hide that the other's may land after it.
-- Returns per event 1 if the lock was still its own, else 0.

-- The order key of a record: split at the last NUL when what follows is bracketed, as
-- records.split_record splits it.
local function order_key(record)
  local last, from = nil, 1
  while true do
    local at = string.find(record, '\0', from, true)
    if not at then break end
    last, from = at, at + 1
  end
  if last and #record - last >= 2 and string.sub(record, last + 1, last + 1) == '['
      and string.sub(record, -1) == ']' then
    return string.sub(record, 1, last - 1)
  end
  return record
end

local function newer(new, current)
  for j = 1, math.min(#new, #current) do
    local a, b = string.byte(new, j), string.byte(current, j)
    if a ~= b then return a > b end
  end
  return #new > #current
end

local kept = {}
for i = 1, #KEYS / 2 do
  local lock, applied = KEYS[2 * i - 1], KEYS[2 * i]
  local token, new = ARGV[4 * i - 2], ARGV[4 * i - 1]
  local linger_ms, linger_value = ARGV[4 * i], ARGV[4 * i + 1]
  local own = redis.call('get', lock) == token
  if own and new ~= '' then
    local current = redis.call('get', applied)
    if not current or newer(order_key(new), order_key(current)) then
      redis.call('set', applied, new, 'EX', ARGV[1])
    end
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
