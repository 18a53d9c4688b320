-- Add the requests one API process admitted while Redis was away (counted in process) to the
-- tenant's usage buckets and quota counters, atomically: all or nothing for the tenant.
--
-- KEYS[1] ZSET index of the open usage minutes
-- KEYS[2 .. m+1] the usage bucket HASH of each minute
-- KEYS[m+2 ..] the quota counter of each month
-- ARGV[1] m, the number of minutes
-- ARGV[2] seconds a quota counter is kept
-- then, for each minute: the minute, the number n of its routes, and n pairs route, requests
-- then, for each quota counter: the requests it gains
-- Every key carries the tenant's hash tag, so this runs on Redis Cluster.

local minutes = tonumber(ARGV[1])
local keep = tonumber(ARGV[2])
local at = 3
for i = 1, minutes do
  local minute = ARGV[at]
  local routes = tonumber(ARGV[at + 1])
  at = at + 2
  local total = 0
  for _ = 1, routes do
    local requests = tonumber(ARGV[at + 1])
    redis.call("HINCRBY", KEYS[1 + i], ARGV[at], requests)
    total = total + requests
    at = at + 2
  end
  redis.call("HINCRBY", KEYS[1 + i], "", total)
  redis.call("ZADD", KEYS[1], minute, minute)
end
for k = minutes + 2, #KEYS do
  redis.call("INCRBY", KEYS[k], ARGV[at])
  at = at + 1
  if redis.call("TTL", KEYS[k]) == -1 then
    redis.call("EXPIRE", KEYS[k], keep)
  end
end
return 1
