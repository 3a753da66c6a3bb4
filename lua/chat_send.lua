-- chat_send: accept one chat message atomically — membership, dedup, offset, history append,
-- and the publication of its frame to the chat's channel.
--
-- KEYS[1] = fanout:{chat:<chatId>}:members   SET of member user ids
-- KEYS[2] = fanout:{chat:<chatId>}:meta      HASH seq (last offset), epoch
-- KEYS[3] = fanout:{chat:<chatId>}:log       STREAM of messages, entry id 0-<offset>
-- KEYS[4] = fanout:{chat:<chatId>}:dedup:<sender>|<clientMsgId>  STRING (unused when ARGV[3] == '')
-- KEYS[5] = fanout:{chat:<chatId>}:ch        pub/sub CHANNEL of the chat's room (not a key: declared
--                                            here so cluster slot checks and routing see it)
-- ARGV[1] = sender user id
-- ARGV[2] = message id (UUIDv7 chosen by the node)
-- ARGV[3] = clientMsgId, or '' when the client sent none
-- ARGV[4] = type (text|image|file|system)
-- ARGV[5] = content
-- ARGV[6] = createdAt (ISO 8601 UTC with milliseconds)
-- ARGV[7] = candidate epoch ([0-9a-f]+), used only if the chat has none yet (first message, or
--           lost sequence)
-- ARGV[8] = HISTORY_MAXLEN (approximate trim, whole stream nodes at a time: the log keeps at
--           least the last HISTORY_MAXLEN entries, and readers never return older offsets)
-- ARGV[9] = HISTORY_TTL_SECS (the log's idle lifetime, refreshed on every append)
-- ARGV[10] = dedup TTL in seconds
-- ARGV[11] = the publish command: PUBLISH (one Redis, Sentinel) or SPUBLISH (Redis Cluster)
-- ARGV[12] = the frame JSON up to the offset (serde's form, built by Rust)
-- ARGV[13] = the frame JSON between the offset and the epoch's characters
-- ARGV[14] = the frame JSON after the epoch's characters
--
-- returns {'forbidden'}                                      sender is not a member
--      or {'dup', messageId, offset, epoch, createdAt}        same (sender, clientMsgId) seen: first ACK again, nothing
--                                                             published (the record's expiry is rewritten unchanged)
--      or {'new', messageId, offset, epoch, createdAt}        appended to history and published
--
-- offset is a decimal string in both replies.
--
-- The frame is ARGV[12] .. offset .. ARGV[13] .. epoch .. ARGV[14] (the epoch's quotes are in
-- ARGV[13] and ARGV[14]; epochs are hex, so they need no escaping): Rust owns the wire form,
-- this script only fills in what it assigns.
--
-- The dedup value is 'offset epoch messageId createdAt' (none of them contains a space).
--
-- Every key carries the room's hash tag, the channel too, so this runs on one slot of a Redis
-- Cluster. Appending to history and publishing in one step is what keeps the order in which
-- nodes see a chat's messages equal to offset order.
if redis.call('SISMEMBER', KEYS[1], ARGV[1]) == 0 then
  return {'forbidden'}
end

local epoch = redis.call('HGET', KEYS[2], 'epoch')

-- A remembered ACK counts only within the chat's current epoch: after the chat was deleted and
-- re-created (or its sequence lost), the old offset would point at nothing.
local dedup = ARGV[3] ~= ''
if dedup then
  local prev = redis.call('GET', KEYS[4])
  if prev then
    local o, e, id, at = string.match(prev, '^(%d+) (%S*) (%S+) (%S+)$')
    if o and e == epoch then
      -- A write of its own (the record's expiry set again to what it was) moves this
      -- connection's replication offset past the first attempt's writes, so that a WAIT after
      -- this repeat confirms the first attempt too, whichever connection made it.
      local ttl = redis.call('PTTL', KEYS[4])
      if ttl > 0 then
        redis.call('PEXPIRE', KEYS[4], ttl)
      end
      return {'dup', id, o, e, at}
    end
  end
end

-- A new epoch: whatever the log still holds belongs to the lost sequence (and its ids would
-- refuse the new offsets).
if not epoch then
  epoch = ARGV[7]
  redis.call('HSET', KEYS[2], 'epoch', epoch)
  redis.call('DEL', KEYS[3])
end
local offset = string.format('%d', redis.call('HINCRBY', KEYS[2], 'seq', 1))

redis.call('XADD', KEYS[3], 'MAXLEN', '~', ARGV[8], '0-' .. offset,
  'id', ARGV[2], 'senderId', ARGV[1], 'clientMsgId', ARGV[3], 'type', ARGV[4],
  'content', ARGV[5], 'createdAt', ARGV[6])
redis.call('EXPIRE', KEYS[3], ARGV[9])

if dedup then
  redis.call('SET', KEYS[4], offset .. ' ' .. epoch .. ' ' .. ARGV[2] .. ' ' .. ARGV[6],
    'EX', ARGV[10])
end

redis.call(ARGV[11], KEYS[5], ARGV[12] .. offset .. ARGV[13] .. epoch .. ARGV[14])

return {'new', ARGV[2], offset, epoch, ARGV[6]}
