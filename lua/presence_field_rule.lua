-- presence_field_rule: the one rule for "a socket field counts" (docs/protocol.md §4), put in
-- front of every presence_*.lua script when it is loaded (src/redis/scripts/mod.rs), so that
-- connect, disconnect, refresh and claim cannot disagree about it. Rust's reads apply the same
-- rule (src/presence/rule.rs); tests/it/scripts.rs runs both on the same table of cases.
--
-- ARGV convention of every presence script: ARGV[1] = fresh_after, in ms since the epoch. A
-- field counts when its value is a JSON object whose `lastSeen` is a number >= fresh_after.
-- Anything else (stale, unparsable, no lastSeen) belongs to a socket nobody refreshes any more:
-- its node died or lost Redis for most of the TTL.
local FRESH_AFTER = tonumber(ARGV[1])

local function field_counts(value)
  local ok, decoded = pcall(cjson.decode, value)
  if not ok or type(decoded) ~= 'table' then
    return false
  end
  local seen = decoded.lastSeen
  return type(seen) == 'number' and seen >= FRESH_AFTER
end

-- Removes the fields of hash `key` that do not count; returns how many remain.
local function prune_fields(key)
  local fields = redis.call('HGETALL', key)
  local live = 0
  for i = 1, #fields, 2 do
    if field_counts(fields[i + 1]) then
      live = live + 1
    else
      redis.call('HDEL', key, fields[i])
    end
  end
  return live
end
