"""The test harness: real PostgreSQL and Redis servers, and the helm binary.

Servers come from `TENANTRY_TEST_DATABASE_URL` / `TENANTRY_TEST_REDIS_URL` when set, otherwise
they are started from local binaries on free ports for the session and removed afterwards.
A missing binary fails the test with what to install: a test never skips for want of a server.
"""
