"""The request limiter: a tenant's rate limits, its monthly quota and its usage metering,
decided in one Redis call per request.

- `spec`: everything the limiter needs for one tenant on one route, compiled once;
- `decision`: one answer of the limiter, and what it says about each limit;
- `request_limiter`: the `RequestLimiter`, which answers from its refusal cache, from Redis,
  or by the tenant's failure mode when Redis is away;
- `script`: the Lua script (`limiter.lua`) that applies a spec in Redis, its arguments and
  its reply, and how the limiter reaches Redis to run it;
- `in_process`: GCRA and the quota in process, for `tenantry dev` and the `local` mode;
- `local_usage`: admitted requests counted in process while Redis is away, and their merge;
- `headers`: the HTTP rate-limit header values of a decision.
"""
