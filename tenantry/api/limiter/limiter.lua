-- One request's rate limit, monthly quota and usage, applied atomically in one round trip.
--
-- GCRA exactly as tenantry.contract.policy.gcra_decide, on Redis' own clock, for the
-- tenant's rate and (when the policy has one for this route) the route's rate; then the
-- monthly quota; and only if all of them admit the request: the new theoretical arrival
-- times, the quota counter and the per-minute usage bucket are written. A refused request
-- writes nothing. Every key carries the tenant's hash tag, so this runs on Redis Cluster.
--
-- KEYS[1] limiter HASH (field "" = tenant rate, "METHOD /path" = a route's rate)
-- KEYS[2] quota counter of the UTC month
-- KEYS[3] usage bucket HASH of the minute (field "" = total, "METHOD /path" = per route)
-- KEYS[4] ZSET index of the open usage minutes
-- ARGV[1] tenant emission interval (us), 0 when the tenant has no rate
-- ARGV[2] tenant burst tolerance (us)
-- ARGV[3] route limit field, "" when no route override applies
-- ARGV[4] route emission interval (us)
-- ARGV[5] route burst tolerance (us)
-- ARGV[6] monthly quota, -1 for none
-- ARGV[7] the usage minute (Unix seconds)
-- ARGV[8] the usage route field ("METHOD /path")
-- ARGV[9] seconds the quota counter is kept
-- ARGV[10] the clock in us; "" means Redis' TIME (only tests replaying a model pass one)
--
-- Returns {admitted, violated, tenant remaining, tenant reset us, retry after us,
--          quota used, route remaining, route reset us}; violated is a bit set:
--          1 the tenant's rate, 2 the route's rate, 4 the monthly quota.

local now
if ARGV[10] ~= "" then
  now = tonumber(ARGV[10])
else
  local time = redis.call("TIME")
  now = tonumber(time[1]) * 1000000 + tonumber(time[2])
end

local violated = 0
local retry_after = 0

-- One limit's GCRA step. A refusal adds `bit` to `violated` and its wait to `retry_after`.
-- Returns the TAT to store if admitted, the requests remaining and the us until full again.
local function gcra(tat, interval, tolerance, bit)
  local current = now
  if tat ~= nil and tat > now then
    current = tat
  end
  local new_tat = current + interval
  local allow_at = new_tat - tolerance - interval
  if allow_at > now then
    violated = violated + bit
    retry_after = math.max(retry_after, allow_at - now)
    return current, 0, current - now
  end
  local waited = now - allow_at
  return new_tat, (waited - waited % interval) / interval, new_tat - now
end

local tenant_interval = tonumber(ARGV[1])
local route_field = ARGV[3]
local route_interval = tonumber(ARGV[4])
local tenant_tat, tenant_remaining, tenant_reset = nil, -1, 0
local route_tat, route_remaining, route_reset = nil, -1, 0

if tenant_interval > 0 or route_field ~= "" then
  local stored = redis.call("HMGET", KEYS[1], "", route_field)
  if tenant_interval > 0 then
    tenant_tat, tenant_remaining, tenant_reset =
      gcra(tonumber(stored[1]), tenant_interval, tonumber(ARGV[2]), 1)
  end
  if route_field ~= "" then
    route_tat, route_remaining, route_reset =
      gcra(tonumber(stored[2]), route_interval, tonumber(ARGV[5]), 2)
  end
end

local quota = tonumber(ARGV[6])
local used = tonumber(redis.call("GET", KEYS[2]) or "0")
if quota >= 0 and used >= quota then
  violated = violated + 4
end

if violated ~= 0 then
  return {0, violated, tenant_remaining, tenant_reset, retry_after, used, route_remaining,
          route_reset}
end

local keep_ms = 0
if tenant_interval > 0 then
  redis.call("HSET", KEYS[1], "", string.format("%.0f", tenant_tat))
  keep_ms = tenant_reset
end
if route_field ~= "" then
  redis.call("HSET", KEYS[1], route_field, string.format("%.0f", route_tat))
  keep_ms = math.max(keep_ms, route_reset)
end
if keep_ms > 0 then
  -- Keep the state at least until it no longer matters; never shorten another field's life.
  keep_ms = (keep_ms - keep_ms % 1000) / 1000 + 1000
  if redis.call("PTTL", KEYS[1]) < keep_ms then
    redis.call("PEXPIRE", KEYS[1], keep_ms)
  end
end

used = redis.call("INCR", KEYS[2])
if used == 1 then
  redis.call("EXPIRE", KEYS[2], tonumber(ARGV[9]))
end
redis.call("HINCRBY", KEYS[3], "", 1)
redis.call("HINCRBY", KEYS[3], ARGV[8], 1)
redis.call("ZADD", KEYS[4], ARGV[7], ARGV[7])

return {1, 0, tenant_remaining, tenant_reset, 0, used, route_remaining, route_reset}
