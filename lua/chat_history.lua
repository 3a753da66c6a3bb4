-- chat_history: read a chat's retained messages and its sequence position in one atomic step.
--
-- KEYS[1] = fanout:{chat:<chatId>}:members SET of member user ids
-- KEYS[2] = fanout:{chat:<chatId>}:meta    HASH seq, epoch
-- KEYS[3] = fanout:{chat:<chatId>}:log     STREAM of messages, entry id 0-<offset>
-- ARGV[1] = since: return messages with offset > since; '' = the newest ARGV[3] messages
-- ARGV[2] = the client's epoch, or '' when it sent none
-- ARGV[3] = limit (already clamped to 1..1000 by the caller)
-- ARGV[4] = the reader's user id (must be a member)
-- ARGV[5] = HISTORY_MAXLEN: only the last HISTORY_MAXLEN offsets are retained (chat_send.lua
--           trims the log approximately, so it may still hold a few older entries: they are
--           never returned)
--
-- returns {'forbidden'} when the reader is not a member, otherwise
--         {'ok', latestOffset, epoch, reset, entries}
--   latestOffset  the chat's last assigned offset (0 for an empty chat)
--   epoch         the chat's current epoch ('' before its first message)
--   reset         1 when the client's position is void: its epoch is not the current one, or
--                 `since` is beyond the current sequence (the sequence was lost and restarted);
--                 the entries are then the oldest retained ones of the current epoch
--   entries       stream entries {id, {field, value, ...}}, oldest first
if redis.call('SISMEMBER', KEYS[1], ARGV[4]) == 0 then
  return {'forbidden'}
end

local seq = tonumber(redis.call('HGET', KEYS[2], 'seq') or '0')
local epoch = redis.call('HGET', KEYS[2], 'epoch') or ''
local since = ARGV[1]
local limit = ARGV[3]
local reset = 0

if since ~= '' then
  if (ARGV[2] ~= '' and ARGV[2] ~= epoch) or tonumber(since) > seq then
    reset = 1
  end
end

-- Offsets at or below floor are no longer retained, whatever the log still holds.
local floor = seq - tonumber(ARGV[5])
if floor < 0 then
  floor = 0
end
local oldest = '(0-' .. string.format('%d', floor)

local entries
if since ~= '' and reset == 0 then
  local from = oldest
  if tonumber(since) > floor then
    from = '(0-' .. since
  end
  entries = redis.call('XRANGE', KEYS[3], from, '+', 'COUNT', limit)
elseif reset == 1 then
  entries = redis.call('XRANGE', KEYS[3], oldest, '+', 'COUNT', limit)
else
  local newest = redis.call('XREVRANGE', KEYS[3], '+', oldest, 'COUNT', limit)
  entries = {}
  for i = #newest, 1, -1 do
    entries[#entries + 1] = newest[i]
  end
end

return {'ok', seq, epoch, reset, entries}
