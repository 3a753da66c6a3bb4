-- publish_once: publish a frame to a room's channel at most once per idempotency key.
--
-- KEYS[1] = fanout:{<room>}:idem:<key>   STRING: the publish id of the first publish with this key
-- KEYS[2] = fanout:{<room>}:ch           CHANNEL of the room (declared for its slot; not a key)
-- ARGV[1] = how long the key is remembered, in seconds
-- ARGV[2] = this publish's id (UUIDv7 chosen by the node)
-- ARGV[3] = PUBLISH (one Redis, Sentinel) or SPUBLISH (Redis Cluster)
-- ARGV[4] = the frame JSON
--
-- returns {'new', id}        published now
--      or {'repeat', id}     the key was used before: nothing published, the first id returned
--                            (the marker's expiry is rewritten unchanged)
--
-- The marker and the channel share the room's hash tag, so the check, the record and the
-- publish happen in one atomic step: a node dying half-way cannot leave a publish that a retry
-- would repeat, nor a key that blocks every retry of a publish that never went out.
local previous = redis.call('GET', KEYS[1])
if previous then
  -- A write of its own (the marker's expiry set again to what it was) moves this connection's
  -- replication offset past the first publish's writes, so that a WAIT after this repeat
  -- confirms the first publish too, whichever connection made it.
  local ttl = redis.call('PTTL', KEYS[1])
  if ttl > 0 then
    redis.call('PEXPIRE', KEYS[1], ttl)
  end
  return {'repeat', previous}
end
redis.call(ARGV[3], KEYS[2], ARGV[4])
redis.call('SET', KEYS[1], ARGV[2], 'EX', ARGV[1])
return {'new', ARGV[2]}
