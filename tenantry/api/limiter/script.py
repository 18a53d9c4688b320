"""The limiter's Lua script (`limiter.lua`): its arguments, its reply, and how the limiter
reaches Redis to run it.

The script runs by SHA (`EVALSHA`); a Redis that does not know it (after a restart, a
failover or `SCRIPT FLUSH`) answers `NOSCRIPT`, and the script is loaded on that node and the
call sent again. Each call names its tenant's hash slot, which routes it on a Redis Cluster.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from importlib.resources import files
from typing import Any, Protocol

from tenantry.api.limiter.decision import Decision
from tenantry.api.limiter.spec import QUOTA_POLICY, ROUTE_POLICY, TENANT_POLICY, LimitSpec
from tenantry.api.redis_pipeline import PipelinedRedis, RedisReplyError, pack
from tenantry.contract.usage import quota_key, usage_bucket_key
from tenantry.redis_client import slot_of

SCRIPT = files("tenantry.api.limiter").joinpath("limiter.lua").read_bytes()
SCRIPT_SHA = hashlib.sha1(SCRIPT, usedforsecurity=False).hexdigest()
QUOTA_KEEP_SECONDS = 35 * 24 * 3600  # beyond the month's end, so last month stays readable

_VIOLATIONS = ((1, TENANT_POLICY), (2, ROUTE_POLICY), (4, QUOTA_POLICY))


def script_arguments(
    spec: LimitSpec, minute: int, month: str, now_us: int | None = None
) -> list[Any]:
    """`EVALSHA` arguments after the SHA. `now_us` replaces Redis' clock: only tests
    replaying a sequence against the reference model pass it."""
    tenant, route = spec.tenant_rate, spec.route_rate
    return [
        4,
        spec.limiter_key,
        quota_key(spec.tenant_id, month),
        usage_bucket_key(spec.tenant_id, minute),
        spec.usage_index_key,
        tenant.emission_interval_us if tenant else 0,
        tenant.burst_tolerance_us if tenant else 0,
        spec.route if route else "",
        route.emission_interval_us if route else 0,
        route.burst_tolerance_us if route else 0,
        spec.monthly_quota if spec.monthly_quota is not None else -1,
        minute,
        spec.route,
        QUOTA_KEEP_SECONDS,
        "" if now_us is None else now_us,
    ]


def decision_from_reply(reply: Sequence[int]) -> Decision:
    """The decision the script replied (see the reply's layout in `limiter.lua`)."""
    (
        admitted,
        violated,
        tenant_remaining,
        tenant_reset,
        retry_after,
        used,
        route_remaining,
        route_reset,
    ) = reply
    return Decision(
        allowed=admitted == 1,
        source="redis",
        violated=tuple(name for bit, name in _VIOLATIONS if violated & bit) if violated else (),
        retry_after_us=retry_after,
        tenant_remaining=tenant_remaining,
        tenant_reset_us=tenant_reset,
        route_remaining=route_remaining,
        route_reset_us=route_reset,
        quota_used=used,
    )


@dataclass(frozen=True, slots=True)
class ScriptCall:
    """The script call of one tenant on one route in one minute. Its arguments change only
    with the minute (and so with the month), so it is built and RESP-encoded once a minute."""

    minute: int
    arguments: tuple[Any, ...]  # after the SHA, as `script_arguments` gives them
    packed: bytes  # the whole `EVALSHA` command, RESP-encoded
    slot: int  # the hash slot of the tenant's keys

    @classmethod
    def build(cls, spec: LimitSpec, minute: int, month: str) -> ScriptCall:
        arguments = tuple(script_arguments(spec, minute, month))
        packed = pack([b"EVALSHA", SCRIPT_SHA, *arguments])
        return cls(minute, arguments, packed, slot_of(spec.limiter_key))


class ScriptRunner(Protocol):
    """How the limiter reaches Redis: run one script call, loading the script when Redis
    lacks it. Raises `RedisUnavailableError` when Redis cannot be reached in time, and
    `RedisReplyError` when it answers with an error."""

    async def run(self, call: ScriptCall) -> Sequence[int]: ...


class PipelinedScriptRunner:
    """Script calls over the auto-pipelined client (`tenantry.api.redis_pipeline`), sent as
    the bytes encoded once a minute, to the node serving the tenant's slot."""

    def __init__(self, redis: PipelinedRedis) -> None:
        self._redis = redis

    async def run(self, call: ScriptCall) -> Sequence[int]:
        try:
            reply: Sequence[int] = await self._redis.send_packed(call.packed, call.slot)
        except RedisReplyError as error:
            reply = await self._recover(call, error)
        return reply

    async def _recover(self, call: ScriptCall, error: RedisReplyError) -> Sequence[int]:
        """Follow a cluster's redirection, and load the script where it is missing."""
        try:
            reply: Sequence[int] = await self._redis.follow(call.packed, call.slot, error)
        except RedisReplyError as failure:
            if not str(failure).startswith("NOSCRIPT"):
                raise
            await self._redis.execute(b"SCRIPT", b"LOAD", SCRIPT, slot=call.slot)
            reply = await self._redis.request(call.packed, call.slot)
        return reply
