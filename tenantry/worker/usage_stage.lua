-- Move a tenant's closed per-minute usage buckets aside under a flush id, atomically.
-- KEYS[1]: the tenant's open-minutes ZSET (scored by the minute, Unix seconds)
-- KEYS[2]: the tenant's SET of flush ids whose staged copy still exists
-- KEYS[3]: the staged HASH of this flush id ("<minute>|<route>" -> requests)
-- ARGV[1]: grace seconds after a minute ends before it counts as closed
-- ARGV[2]: the bucket key prefix (the bucket of minute m is ARGV[2] .. m)
-- ARGV[3]: the flush id
-- ARGV[4]: at most this many minutes per call (bounds the time Redis is busy)
-- Returns the number of minutes moved. All keys share the tenant's hash tag (one slot).
local now = tonumber(redis.call('TIME')[1])
local cutoff = now - 60 - tonumber(ARGV[1])
local closed = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', cutoff, 'WITHSCORES', 'LIMIT', 0,
  tonumber(ARGV[4]))
local moved = 0
for i = 1, #closed, 2 do
  local minute = string.format('%d', tonumber(closed[i + 1]))
  local bucket = ARGV[2] .. minute
  local fields = redis.call('HGETALL', bucket)
  for j = 1, #fields, 2 do
    redis.call('HINCRBY', KEYS[3], minute .. '|' .. fields[j], fields[j + 1])
  end
  redis.call('DEL', bucket)
  redis.call('ZREM', KEYS[1], closed[i])
  moved = moved + 1
end
if moved > 0 then
  redis.call('SADD', KEYS[2], ARGV[3])
end
return moved
