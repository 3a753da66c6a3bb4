-- publish_once: append a backplane envelope at most once per idempotency key.
--
-- KEYS[1] = fanout:{s<n>}:idem:<key>   STRING: the entry id of the first publish with this key
-- KEYS[2] = fanout:{s<n>}:bp           STREAM: the backplane shard of the publish's routing key
-- ARGV[1] = how long the key is remembered, in seconds
-- ARGV[2] = backplane MAXLEN (approximate trim)
-- ARGV[3] = publishing node id (stream field n)
-- ARGV[4] = envelope JSON (stream field e)
--
-- returns {'new', entryId}     published now
--      or {'repeat', entryId}  the key was used before: nothing published
--
-- The marker and the shard stream share the shard's hash tag, so the check, the append and the
-- record happen in one atomic step: a node dying half-way cannot leave a publish that a retry
-- would repeat, nor a key that blocks every retry.
local previous = redis.call('GET', KEYS[1])
if previous then
  return {'repeat', previous}
end
local id = redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[2], '*', 'n', ARGV[3], 'e', ARGV[4])
redis.call('SET', KEYS[1], id, 'EX', ARGV[1])
return {'new', id}
