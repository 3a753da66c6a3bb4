-- chat_send: accept one chat message atomically — membership, dedup, offset, history append,
-- and the publication of its frame to the chat's channel.
--
-- KEYS[1] = fanout:{chat:<chatId>}:members   SET of member user ids
-- KEYS[2] = fanout:{chat:<chatId>}:meta      HASH seq (last offset), epoch, ttlp (see ARGV[8])
-- KEYS[3] = fanout:{chat:<chatId>}:log       STREAM of messages, entry id 0-<offset>, one field
--                                            'm' = ARGV[11]
-- KEYS[4] = fanout:{chat:<chatId>}:dedup:<sender>|<clientMsgId>  STRING (unused when ARGV[3] == '')
-- KEYS[5] = fanout:{chat:<chatId>}:ch        pub/sub CHANNEL of the chat's room (not a key: declared
--                                            here so cluster slot checks and routing see it)
-- ARGV[1] = sender user id
-- ARGV[2] = message id (UUIDv7 chosen by the node)
-- ARGV[3] = clientMsgId, or '' when the client sent none
-- ARGV[4] = createdAt (ISO 8601 UTC with milliseconds)
-- ARGV[5] = candidate epoch ([0-9a-f]+), used only if the chat has none yet (first message, or
--           lost sequence)
-- ARGV[6] = HISTORY_MAXLEN (approximate trim, whole stream nodes at a time: the log keeps at
--           least the last HISTORY_MAXLEN entries, and readers never return older offsets)
-- ARGV[7] = the log's TTL in seconds: HISTORY_TTL_SECS + R, where R is the refresh period
--           (chat_send.rs: min(60, HISTORY_TTL_SECS))
-- ARGV[8] = the number of the current refresh period (the node's unix time / R): the log's TTL
--           is set when the stream is created and on the first append of each period (meta's
--           ttlp remembers the last one), not on every append, so an idle log expires between
--           HISTORY_TTL_SECS and HISTORY_TTL_SECS + R after its last append
-- ARGV[9] = dedup TTL in seconds
-- ARGV[10] = the publish command: PUBLISH (one Redis, Sentinel) or SPUBLISH (Redis Cluster)
-- ARGV[11] = the log entry: the message as a JSON object of id, senderId, clientMsgId (null when
--            none), type, content, createdAt (built by Rust; chat_history.rs reads it)
-- ARGV[12] = the frame JSON up to the offset (serde's form, built by Rust)
-- ARGV[13] = the frame JSON between the offset and the epoch's characters
-- ARGV[14] = the frame JSON after the epoch's characters
--
-- returns {'forbidden'}                                      sender is not a member
--      or {'dup', messageId, offset, epoch, createdAt}        same (sender, clientMsgId) seen: first ACK again, nothing
--                                                             appended or published (the offset taken is given back)
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
--
-- Every redis.call costs a few µs under load (issue 17, docs/benchmarks.md), so a new message
-- takes six: SISMEMBER, HMGET, HINCRBY, SET, XADD, PUBLISH (+ EXPIRE and HSET once per period).
if redis.call('SISMEMBER', KEYS[1], ARGV[1]) == 0 then
  return {'forbidden'}
end

local meta = redis.call('HMGET', KEYS[2], 'epoch', 'ttlp')
local epoch = meta[1]

-- A new epoch: whatever the log still holds belongs to the lost sequence (and its ids would
-- refuse the new offsets).
if not epoch then
  epoch = ARGV[5]
  redis.call('HSET', KEYS[2], 'epoch', epoch)
  redis.call('DEL', KEYS[3])
end
local offset = string.format('%d', redis.call('HINCRBY', KEYS[2], 'seq', 1))

-- The dedup record is written with the offset in one SET NX GET (one call instead of GET, then
-- SET). A remembered ACK counts only within the chat's current epoch: after the chat was deleted
-- and re-created (or its sequence lost), the old offset would point at nothing, so the record is
-- replaced. On a duplicate the offset is given back: nothing else has seen it, as this script is
-- atomic. Taking and giving it back are writes of this call's own, so they move this
-- connection's replication offset past the first attempt's writes: a WAIT after this repeat
-- confirms the first attempt too, whichever connection made it (REDIS_WAIT_REPLICAS).
if ARGV[3] ~= '' then
  local value = offset .. ' ' .. epoch .. ' ' .. ARGV[2] .. ' ' .. ARGV[4]
  local prev = redis.call('SET', KEYS[4], value, 'NX', 'GET', 'EX', ARGV[9])
  if prev then
    local o, e, id, at = string.match(prev, '^(%d+) (%S*) (%S+) (%S+)$')
    -- meta[1], not epoch: a candidate epoch just chosen is never the record's.
    if o and e == meta[1] then
      redis.call('HINCRBY', KEYS[2], 'seq', -1)
      return {'dup', id, o, e, at}
    end
    redis.call('SET', KEYS[4], value, 'EX', ARGV[9])
  end
end

-- NOMKSTREAM: a log that does not exist (new epoch, expired, evicted) is created by the second
-- XADD and gets its TTL at once, whatever the period.
local id = '0-' .. offset
local refresh = meta[2] ~= ARGV[8]
if not redis.call('XADD', KEYS[3], 'NOMKSTREAM', 'MAXLEN', '~', ARGV[6], id, 'm', ARGV[11]) then
  redis.call('XADD', KEYS[3], id, 'm', ARGV[11])
  refresh = true
end
if refresh then
  redis.call('EXPIRE', KEYS[3], ARGV[7])
  redis.call('HSET', KEYS[2], 'ttlp', ARGV[8])
end

redis.call(ARGV[10], KEYS[5], ARGV[12] .. offset .. ARGV[13] .. epoch .. ARGV[14])

return {'new', ARGV[2], offset, epoch, ARGV[4]}
