-- Move a tenant's closed per-minute usage buckets aside under a flush id, atomically.
-- KEYS[1]: the tenant's open-minutes ZSET (scored by the minute, Unix seconds)
-- KEYS[2]: the tenant's SET of flush ids whose staged copy still exists
-- KEYS[3]: the staged HASH of this flush id ("<minute>|<route>" -> requests)
-- KEYS[4 ..]: the bucket HASH of each candidate minute
-- ARGV[1]: grace seconds after a minute ends before it counts as closed
-- ARGV[2]: the flush id
-- ARGV[3 ..]: the candidate minutes, in the order of their buckets in KEYS
-- A candidate is moved only if it is closed by Redis' clock and still in the index. Every
-- key is named in KEYS, so on a Redis Cluster whose slot is being migrated the call is
-- redirected or refused as a whole (ASK, TRYAGAIN) rather than reading half of the buckets.
-- Returns the number of minutes moved. All keys share the tenant's hash tag (one slot).
local now = tonumber(redis.call('TIME')[1])
local cutoff = now - 60 - tonumber(ARGV[1])
local moved = 0
for i = 4, #KEYS do
  local minute = ARGV[i - 1]
  if tonumber(minute) <= cutoff and redis.call('ZSCORE', KEYS[1], minute) then
    local fields = redis.call('HGETALL', KEYS[i])
    for j = 1, #fields, 2 do
      redis.call('HINCRBY', KEYS[3], minute .. '|' .. fields[j], fields[j + 1])
    end
    redis.call('DEL', KEYS[i])
    redis.call('ZREM', KEYS[1], minute)
    moved = moved + 1
  end
end
if moved > 0 then
  redis.call('SADD', KEYS[2], ARGV[2])
end
return moved
