-- presence_disconnect: remove one socket of a user; report whether the user went offline.
--
-- KEYS[1] = presence:user:{<userId>}   HASH socket id -> JSON
-- KEYS[2] = presence:state:{<userId>}  STRING transition version (odd = online)
-- ARGV[1] = fresh_after in ms (presence_field_rule.lua)
-- ARGV[2] = socket id
-- ARGV[3] = how long an offline version is remembered, in seconds
--
-- returns the new (even) version when this was the user's last socket that counts and the user
-- was online, else 0. Fields that no longer count (a dead node's sockets) are pruned with it,
-- so the last live socket closing cleanly gives `disconnected` at once instead of leaving the
-- user to expire later. The hash is deleted when no field is left.
redis.call('HDEL', KEYS[1], ARGV[2])
if prune_fields(KEYS[1]) > 0 then
  return 0
end
redis.call('DEL', KEYS[1])
local v = tonumber(redis.call('GET', KEYS[2]) or '0')
if v % 2 == 0 then
  return 0
end
v = v + 1
redis.call('SET', KEYS[2], v, 'EX', ARGV[3])
return v
