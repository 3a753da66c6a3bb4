-- chat_send: accept one chat message atomically — membership, dedup, offset, history append,
-- and the backplane envelope that carries it to every node.
--
-- KEYS[1] = fanout:{s<n>}:chat:<chatId>:members   SET of member user ids
-- KEYS[2] = fanout:{s<n>}:chat:<chatId>:meta      HASH seq (last offset), epoch
-- KEYS[3] = fanout:{s<n>}:chat:<chatId>:log       STREAM of messages, entry id 0-<offset>
-- KEYS[4] = fanout:{s<n>}:chat:<chatId>:dedup:<sender>|<clientMsgId>  STRING (unused when ARGV[3] == '')
-- KEYS[5] = fanout:{s<n>}:bp                      STREAM: the chat's backplane shard
-- ARGV[1] = sender user id
-- ARGV[2] = message id (UUIDv7 chosen by the node)
-- ARGV[3] = clientMsgId, or '' when the client sent none
-- ARGV[4] = type (text|image|file|system)
-- ARGV[5] = content
-- ARGV[6] = createdAt (ISO 8601 UTC with milliseconds)
-- ARGV[7] = candidate epoch, used only if the chat has none yet (first message, or lost sequence)
-- ARGV[8] = HISTORY_MAXLEN (exact trim)
-- ARGV[9] = HISTORY_TTL_SECS (the log's idle lifetime, refreshed on every append)
-- ARGV[10] = dedup TTL in seconds
-- ARGV[11] = publishing node id (stream field n)
-- ARGV[12] = backplane MAXLEN (approximate trim)
-- ARGV[13] = the chat:message envelope JSON up to the offset (serde's form, built by Rust)
-- ARGV[14] = the envelope JSON between the offset and the epoch
-- ARGV[15] = the envelope JSON after the epoch
--
-- returns {'forbidden'}                                      sender is not a member
--      or {'dup', messageId, offset, epoch, createdAt}        same (sender, clientMsgId) seen: first ACK again, nothing published
--      or {'new', messageId, offset, epoch, createdAt}        appended to history and published
--
-- The envelope (stream field e) is ARGV[13] .. offset .. ARGV[14] .. epoch as a JSON string ..
-- ARGV[15]: Rust owns the wire form, this script only fills in what it assigns.
--
-- Every key carries the shard's hash tag, so this runs on one slot of a Redis Cluster too.
-- Appending to history and to the shard stream in one step is what keeps delivery order equal
-- to offset order on every node.
if redis.call('SISMEMBER', KEYS[1], ARGV[1]) == 0 then
  return {'forbidden'}
end

local epoch = redis.call('HGET', KEYS[2], 'epoch')

-- A remembered ACK counts only within the chat's current epoch: after the chat was deleted and
-- re-created (or its sequence lost), the old offset would point at nothing.
if ARGV[3] ~= '' then
  local prev = redis.call('GET', KEYS[4])
  if prev then
    local p = cjson.decode(prev)
    if p[3] == epoch then
      return {'dup', p[1], p[2], p[3], p[4]}
    end
  end
end

if not epoch then
  epoch = ARGV[7]
  redis.call('HSET', KEYS[2], 'epoch', epoch)
end
local offset = redis.call('HINCRBY', KEYS[2], 'seq', 1)

redis.call('XADD', KEYS[3], 'MAXLEN', ARGV[8], '0-' .. offset,
  'id', ARGV[2], 'senderId', ARGV[1], 'clientMsgId', ARGV[3], 'type', ARGV[4],
  'content', ARGV[5], 'createdAt', ARGV[6])
redis.call('EXPIRE', KEYS[3], ARGV[9])

if ARGV[3] ~= '' then
  redis.call('SET', KEYS[4], cjson.encode({ARGV[2], offset, epoch, ARGV[6]}), 'EX', ARGV[10])
end

local envelope = ARGV[13] .. string.format('%d', offset) .. ARGV[14] .. cjson.encode(epoch) .. ARGV[15]
redis.call('PUBLISH', KEYS[5], envelope)

return {'new', ARGV[2], offset, epoch, ARGV[6]}
