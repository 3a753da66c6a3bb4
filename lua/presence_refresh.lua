-- presence_refresh: keep one node's live sockets of a user registered (ping and the node's own
-- periodic refresh), and prune fields of sockets whose node stopped refreshing them.
--
-- KEYS[1] = presence:user:{<userId>}   HASH socket id -> JSON {nodeId, connectedAt, lastSeen}
-- KEYS[2] = presence:state:{<userId>}  STRING transition version (odd = online)
-- ARGV[1] = fresh_after in ms (presence_field_rule.lua): fields that do not count are removed
-- ARGV[2] = key TTL in milliseconds
-- ARGV[3] = now in milliseconds
-- ARGV[4] = "1" to report the user's current online version even without a transition (the
--           caller lost the reply of an earlier refresh, see below), else "0"
-- ARGV[5..] = pairs: socket id, field JSON (this node's live sockets of the user)
--
-- returns {version, 1} when the user was offline (its key had expired and the expiry was
-- claimed while this node still had live sockets, e.g. after a network split) and is now online
-- again at `version`; {version, 0} when nothing changed but ARGV[4] asked for the current
-- (online) version; else {0, 0}. When the version is missing altogether, Redis lost its data:
-- the sockets are re-registered silently, since their peers never saw them go offline.
--
-- Why the report: a refresh whose reply the node never got (a timeout while the link to Redis
-- was cut) may still run once the link heals, and decide the online transition; nobody would
-- publish it. After a failed refresh the node asks for reports and publishes them; peers drop a
-- version they already applied, so a report of a published transition changes nothing.
for i = 5, #ARGV, 2 do
  redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1])
end
if prune_fields(KEYS[1]) == 0 then
  return {0, 0}
end
redis.call('PEXPIRE', KEYS[1], ARGV[2])
local current = redis.call('GET', KEYS[2])
if not current then
  redis.call('SET', KEYS[2], 2 * tonumber(ARGV[3]) + 1)
  return {0, 0}
end
local v = tonumber(current)
if v % 2 == 1 then
  if ARGV[4] == '1' then
    return {v, 0}
  end
  return {0, 0}
end
v = v + 1
redis.call('SET', KEYS[2], v)
return {v, 1}
