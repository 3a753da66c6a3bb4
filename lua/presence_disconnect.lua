-- presence_disconnect: remove one socket of a user; report whether the user went offline.
--
-- KEYS[1] = presence:user:{<userId>}   HASH socket id -> JSON
-- KEYS[2] = presence:state:{<userId>}  STRING transition version (odd = online)
-- ARGV[1] = socket id
-- ARGV[2] = how long an offline version is remembered, in seconds
--
-- returns the new (even) version when this was the user's last socket and the user was online,
-- else 0. The hash is deleted when its last field goes.
redis.call('HDEL', KEYS[1], ARGV[1])
if redis.call('HLEN', KEYS[1]) > 0 then
  return 0
end
redis.call('DEL', KEYS[1])
local v = tonumber(redis.call('GET', KEYS[2]) or '0')
if v % 2 == 0 then
  return 0
end
v = v + 1
redis.call('SET', KEYS[2], v, 'EX', ARGV[2])
return v
