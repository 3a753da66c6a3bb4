-- presence_claim: turn an expired presence key, or one whose fields all stopped counting, into
-- exactly one offline transition, however many nodes (keyspace notification listeners, the
-- sweep) try at once.
--
-- KEYS[1] = presence:user:{<userId>}   HASH (gone once it expired)
-- KEYS[2] = presence:state:{<userId>}  STRING transition version (odd = online)
-- ARGV[1] = fresh_after in ms (presence_field_rule.lua)
-- ARGV[2] = how long an offline version is remembered, in seconds
--
-- returns {1, version}      this caller claimed the expiry: the user is offline at `version`
--      or {0, pttl}         a field of the key still counts (the user is online): pttl = the
--                           key's remaining TTL in ms
--      or {0, -2, version}  the key is gone and the user already offline at `version` (0 when
--                           Redis lost it): another caller claimed it, and may not have published
--                           it yet (the sweep publishes it again: presence/sweep.rs)
if redis.call('EXISTS', KEYS[1]) == 1 then
  if prune_fields(KEYS[1]) > 0 then
    return {0, redis.call('PTTL', KEYS[1])}
  end
  redis.call('DEL', KEYS[1])
end
local v = tonumber(redis.call('GET', KEYS[2]) or '0')
if v % 2 == 0 then
  return {0, -2, v}
end
v = v + 1
redis.call('SET', KEYS[2], v, 'EX', ARGV[2])
return {1, v}
