-- Take or renew a lease on one of a tenant's job slots.
-- KEYS[1]: the tenant's lease ZSET (member = job id, score = lease expiry in ms, Redis time)
-- ARGV[1]: job id, ARGV[2]: slot count, ARGV[3]: lease length in ms
-- Returns 1 when the job holds a slot, 0 when every slot is held by a live lease.
local now = redis.call('TIME')
local now_ms = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
local lease_ms = tonumber(ARGV[3])
-- Leases of crashed workers lapse here: a dead worker cannot keep a slot.
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now_ms)
local held = redis.call('ZSCORE', KEYS[1], ARGV[1])
if not held and redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[2]) then
  return 0
end
redis.call('ZADD', KEYS[1], now_ms + lease_ms, ARGV[1])
redis.call('PEXPIRE', KEYS[1], lease_ms * 2)
return 1
