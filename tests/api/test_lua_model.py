"""The Lua script computes exactly what the reference model `gcra_decide` computes.

Hypothesis draws a policy and a sequence of arrival gaps; each arrival is replayed against
the script on the real Redis (with the clock passed in) and against the model, and every
decision, remaining count, retry and reset time, and the stored TAT, must agree.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import redis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tenantry.api.limiter.script import SCRIPT, decision_from_reply, script_arguments
from tenantry.api.limiter.spec import compile_spec
from tenantry.contract.policy import gcra_decide, gcra_params
from tenantry.contract.registry import TenantEntry
from tenantry.contract.resources import EffectiveLimits, FailureMode, JobPriority

pytestmark = pytest.mark.integration

START_US = 1_764_000_000_000_000  # a realistic Unix time in microseconds


@pytest.fixture(scope="module")
def client(redis_server: str) -> Iterator[redis.Redis]:
    connection = redis.Redis.from_url(redis_server)
    yield connection
    connection.close()


def _limits(rpm: int, burst: int) -> EffectiveLimits:
    return EffectiveLimits(
        requests_per_minute=rpm,
        burst=burst,
        max_concurrent_jobs=1,
        job_priority=JobPriority.DEFAULT,
        reserved_requests_per_second=0,
        failure_mode=FailureMode.OPEN,
    )


@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(
    rpm=st.integers(min_value=1, max_value=600_000),
    burst=st.integers(min_value=0, max_value=50),
    gaps=st.lists(st.integers(min_value=0, max_value=5_000_000), min_size=1, max_size=40),
)
def test_the_script_matches_the_reference_model(
    client: redis.Redis, rpm: int, burst: int, gaps: list[int]
) -> None:
    tenant = TenantEntry(
        tenant_id="model/t", display_name="t", tier="t", limits=_limits(rpm, burst)
    )
    assert tenant.limits is not None
    spec = compile_spec(tenant, tenant.limits, "GET", "/v1/limits")
    client.delete(spec.limiter_key)
    params = gcra_params(rpm, burst)
    tat: int | None = None
    now = START_US
    for gap in gaps:
        now += gap
        expected = gcra_decide(params, tat, now)
        reply = client.eval(SCRIPT.decode(), *script_arguments(spec, 0, "2026-01", now))
        decision = decision_from_reply(reply)
        assert decision.allowed == expected.allowed
        assert decision.tenant_remaining == expected.remaining
        assert decision.tenant_reset_us == expected.reset_after_us
        assert decision.retry_after_us == expected.retry_after_us
        if expected.allowed:
            tat = expected.tat_us
        stored = client.hget(spec.limiter_key, "")
        assert (int(stored) if stored is not None else None) == tat
