-- presence_refresh: keep one node's live sockets of a user registered (ping and the node's own
-- periodic refresh), and prune fields of sockets whose node stopped refreshing them.
--
-- KEYS[1] = presence:user:{<userId>}   HASH socket id -> JSON {nodeId, connectedAt, lastSeen}
-- KEYS[2] = presence:state:{<userId>}  STRING transition version (odd = online)
-- ARGV[1] = key TTL in milliseconds
-- ARGV[2] = now in milliseconds
-- ARGV[3] = prune threshold: fields whose lastSeen is older (ms) are removed
-- ARGV[4..] = pairs: socket id, field JSON (this node's live sockets of the user)
--
-- returns the new version when the user was offline (its key had expired and the expiry was
-- claimed while this node still had live sockets, e.g. after a network split) and is now online
-- again, else 0. When the version is missing altogether, Redis lost its data: the sockets are
-- re-registered silently, since their peers never saw them go offline.
for i = 4, #ARGV, 2 do
  redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1])
end
local fields = redis.call('HGETALL', KEYS[1])
local threshold = tonumber(ARGV[3])
for i = 1, #fields, 2 do
  local ok, value = pcall(cjson.decode, fields[i + 1])
  if not ok or type(value) ~= 'table' or tonumber(value.lastSeen or 0) < threshold then
    redis.call('HDEL', KEYS[1], fields[i])
  end
end
if redis.call('HLEN', KEYS[1]) == 0 then
  return 0
end
redis.call('PEXPIRE', KEYS[1], ARGV[1])
local current = redis.call('GET', KEYS[2])
if not current then
  redis.call('SET', KEYS[2], 2 * tonumber(ARGV[2]) + 1)
  return 0
end
local v = tonumber(current)
if v % 2 == 1 then
  return 0
end
v = v + 1
redis.call('SET', KEYS[2], v)
return v
