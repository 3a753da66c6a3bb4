-- presence_connect: register one live socket of a user; report whether the user came online.
--
-- KEYS[1] = presence:user:{<userId>}   HASH socket id -> JSON {nodeId, connectedAt, lastSeen}
-- KEYS[2] = presence:state:{<userId>}  STRING transition version: odd = online, even = offline
-- ARGV[1] = socket id
-- ARGV[2] = the field's JSON value
-- ARGV[3] = key TTL in milliseconds (PRESENCE_TTL_SECS)
-- ARGV[4] = now in milliseconds (seeds the version when the user has none, see below)
--
-- returns the new version when this connect took the user offline -> online, else 0.
--
-- Versions only grow, and each transition adds one, so a node that sees transitions out of
-- order can drop stale ones. A user with no version yet (first connect, or Redis lost its data)
-- starts from 2 * now: larger than any version of an earlier life of the key.
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
redis.call('PEXPIRE', KEYS[1], ARGV[3])
local v = tonumber(redis.call('GET', KEYS[2]) or '0')
if v % 2 == 1 then
  return 0
end
if v == 0 then
  v = 2 * tonumber(ARGV[4])
end
v = v + 1
redis.call('SET', KEYS[2], v)
return v
