-- Rebuild a tenant's monthly quota counter after Redis lost it, once.
-- KEYS[1]: the quota counter of the month, KEYS[2]: its "seeded" marker
-- KEYS[3]: the next month's marker
-- ARGV[1]: requests of the month already flushed to PostgreSQL
-- ARGV[2]: marker lifetime in seconds
-- The marker lives as long as Redis keeps its data: a missing marker means the counter
-- lost what was flushed before, so that amount is added back. The next month's marker is set
-- ahead, so a month that starts normally is never mistaken for a loss.
-- Returns the amount added (0 when the marker was there).
local added = 0
if redis.call('EXISTS', KEYS[2]) == 0 then
  added = tonumber(ARGV[1])
  if added > 0 then
    redis.call('INCRBY', KEYS[1], added)
    if redis.call('TTL', KEYS[1]) == -1 then
      redis.call('EXPIRE', KEYS[1], ARGV[2])
    end
  end
  redis.call('SET', KEYS[2], '1', 'EX', ARGV[2])
end
redis.call('SET', KEYS[3], '1', 'EX', ARGV[2], 'NX')
return added
