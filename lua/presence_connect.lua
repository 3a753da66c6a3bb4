-- presence_connect: register one live socket of a user; report whether the user came online.
--
-- KEYS[1] = presence:user:{<userId>}   HASH socket id -> JSON {nodeId, connectedAt, lastSeen}
-- KEYS[2] = presence:state:{<userId>}  STRING transition version: odd = online, even = offline
-- ARGV[1] = fresh_after in ms (presence_field_rule.lua)
-- ARGV[2] = socket id
-- ARGV[3] = the field's JSON value
-- ARGV[4] = key TTL in milliseconds (PRESENCE_TTL_SECS)
-- ARGV[5] = now in milliseconds (seeds the version when the user has none, see below)
--
-- returns the new version when this connect took the user offline -> online, else 0.
--
-- Fields that no longer count are pruned first. A user still online by version whose other
-- fields all stopped counting (their node died less than a TTL ago, nobody claimed it yet) stays
-- online without a transition: to the peers the new socket simply replaces the dead one.
--
-- Versions only grow, and each transition adds one, so a node that sees transitions out of
-- order can drop stale ones. A user with no version yet (first connect, or Redis lost its data)
-- starts from 2 * now: larger than any version of an earlier life of the key.
prune_fields(KEYS[1])
redis.call('HSET', KEYS[1], ARGV[2], ARGV[3])
redis.call('PEXPIRE', KEYS[1], ARGV[4])
local v = tonumber(redis.call('GET', KEYS[2]) or '0')
if v % 2 == 1 then
  return 0
end
if v == 0 then
  v = 2 * tonumber(ARGV[5])
end
v = v + 1
redis.call('SET', KEYS[2], v)
return v
