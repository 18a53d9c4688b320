"""Who is calling: API key authentication, scopes, and the limiter, as one FastAPI dependency.

A router protects a route by depending on `require_scope(...)`:

    @router.post("/v1/jobs")
    async def create_job(caller: Annotated[Caller, Depends(require_scope(Scope.JOBS_WRITE))]):
        caller.tenant.tenant_id  # the authenticated tenant; never trust one from the request

The dependency (1) refuses a client address that has failed authentication too often,
(2) finds the presented key in the in-memory registry by the SHA-256 of the whole key (a key
not found that way is parsed, looked up by its public id and its hash compared in constant
time, to say precisely what is wrong with it), (3) refuses expired, revoked, suspended and
unconfigured tenants with their own problem types, (4) checks the route's scopes (403 naming
the missing ones), and (5) applies the tenant's rate limit, quota and metering in one Redis
round trip. Every protected route is therefore limited and metered, and the response carries
the rate-limit headers.

Keys come from `Authorization: Bearer <key>` or `X-API-Key: <key>`.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Container, Iterable, Mapping, MutableMapping
from dataclasses import dataclass
from datetime import datetime
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network, ip_address
from typing import TYPE_CHECKING, Any

from fastapi import Request

from tenantry.api.problems import (
    EXPIRED_API_KEY,
    INSUFFICIENT_SCOPE,
    MALFORMED_API_KEY,
    MISSING_API_KEY,
    POLICY_UNRESOLVED,
    REVOKED_API_KEY,
    TENANT_SUSPENDED,
    UNKNOWN_API_KEY,
    ProblemError,
)
from tenantry.contract.keys import (
    KEY_LENGTH,
    PREFIX,
    MalformedApiKeyError,
    hash_key,
    parse_key,
    verify_key,
)
from tenantry.contract.policy import gcra_params
from tenantry.contract.registry import KeyRecord, Registry, RegistryKey, TenantEntry
from tenantry.contract.resources import EffectiveLimits, Scope

if TYPE_CHECKING:
    from tenantry.api.runtime import ApiRuntime

TrustedNetwork = IPv4Network | IPv6Network

SECURITY_SCHEMES = {
    "bearer": {"type": "http", "scheme": "bearer", "description": "`Authorization: Bearer tnt_…`"},
    "apiKey": {
        "type": "apiKey",
        "in": "header",
        "name": "X-API-Key",
        "description": "`X-API-Key: tnt_…`",
    },
}


@dataclass(frozen=True, slots=True)
class Caller:
    """The authenticated caller: its tenant entry, the key it used, its effective limits."""

    tenant: TenantEntry
    key: RegistryKey
    limits: EffectiveLimits


def keys_by_hash(registry: Registry) -> dict[str, KeyRecord]:
    """Every key of a registry by its stored hash, for the fast path of `authenticate`."""
    return {record.key.key_hash: record for record in registry.by_key_id.values()}


def authenticate(
    registry: Registry,
    presented: str | None,
    now: datetime,
    revoked: Container[str],
    by_hash: Mapping[str, KeyRecord] | None = None,
) -> KeyRecord:
    """The registry record of a presented key, or a `ProblemError` saying what is wrong.

    A key whose SHA-256 is in `by_hash` is known and intact (the secret carries 256 bits), so
    the common case costs one hash and one dict lookup; anything else takes the full path that
    says precisely what is wrong. `revoked` holds ids of keys removed from the registry while
    this process ran, so a revoked key is told apart from one that never existed.
    """
    if not presented:
        raise ProblemError(
            MISSING_API_KEY, "send the key as `Authorization: Bearer <key>` or `X-API-Key`"
        )
    record = None
    if by_hash is not None and len(presented) == KEY_LENGTH and presented.isascii():
        record = by_hash.get(hash_key(presented))
    if record is None:
        record = _identify(registry, presented, revoked)
    stored = record.key
    if stored.valid_until is not None and now >= stored.valid_until:
        raise ProblemError(
            REVOKED_API_KEY,
            f"key {_public(stored.key_id)} was rotated; its grace period ended at "
            f"{stored.valid_until.isoformat()}",
        )
    if stored.expires_at is not None and now >= stored.expires_at:
        raise ProblemError(
            EXPIRED_API_KEY,
            f"key {_public(stored.key_id)} expired at {stored.expires_at.isoformat()}",
        )
    tenant = record.tenant
    if tenant.suspended:
        raise ProblemError(TENANT_SUSPENDED, f"tenant {tenant.tenant_id} is suspended")
    if tenant.limits is None:
        raise ProblemError(
            POLICY_UNRESOLVED,
            f"tenant {tenant.tenant_id} refers to tier {tenant.tier!r}, which cannot be resolved",
        )
    return record


def _public(key_id: str) -> str:
    return f"{PREFIX}{key_id}_…"


def _identify(registry: Registry, presented: str, revoked: Container[str]) -> KeyRecord:
    try:
        key = parse_key(presented)
    except MalformedApiKeyError as error:
        raise ProblemError(MALFORMED_API_KEY, str(error)) from None
    record = registry.lookup(key.key_id)
    if record is None:
        if key.key_id in revoked:
            raise ProblemError(REVOKED_API_KEY, f"key {key} has been revoked")
        raise ProblemError(UNKNOWN_API_KEY, f"no key {key} is known")
    if not verify_key(key, record.key.key_hash):
        raise ProblemError(UNKNOWN_API_KEY, f"no key {key} is known")
    return record


def check_scopes(key: RegistryKey, needed: Iterable[Scope]) -> None:
    missing = sorted(scope.value for scope in needed if scope not in key.scopes)
    if missing:
        raise ProblemError(
            INSUFFICIENT_SCOPE,
            f"key {key.name!r} lacks the scope {', '.join(missing)}",
            extensions={"missing_scopes": missing},
        )


def client_address(scope: MutableMapping[str, Any], trusted: tuple[TrustedNetwork, ...]) -> str:
    """The client's address. `X-Forwarded-For` is believed only when the peer is a trusted
    proxy, and then read from the right, skipping trusted hops: the first untrusted address
    is the client (entries further left could have been written by anyone)."""
    client = scope.get("client")
    peer = client[0] if client else "unknown"
    if not trusted or not _is_trusted(peer, trusted):
        return peer
    forwarded = [
        value.decode("latin-1") for name, value in scope["headers"] if name == b"x-forwarded-for"
    ]
    hops = [hop.strip() for line in forwarded for hop in line.split(",")]
    for hop in reversed(hops):
        try:
            address = ip_address(hop)
        except ValueError:
            return peer
        if not _within(address, trusted):
            return str(address)
    return peer


def _is_trusted(peer: str, trusted: tuple[TrustedNetwork, ...]) -> bool:
    try:
        return _within(ip_address(peer), trusted)
    except ValueError:
        return False


def _within(address: IPv4Address | IPv6Address, trusted: tuple[TrustedNetwork, ...]) -> bool:
    return any(address.version == net.version and address in net for net in trusted)


class AuthFailureLimiter:
    """GCRA over failed authentications per client address, in process.

    After `burst + 1` failures in a row an address is refused until its rate allows another
    attempt, whatever key it presents, so guessing keys does not pay. The table keeps at most
    `max_addresses` entries, evicting the least recently seen.
    """

    def __init__(self, per_minute: int, burst: int, max_addresses: int = 65_536) -> None:
        self._params = gcra_params(per_minute, burst)
        self._tats: OrderedDict[str, int] = OrderedDict()
        self._max_addresses = max_addresses

    def blocked_for(self, address: str) -> float:
        """Seconds until `address` may try again; 0 when it may now."""
        tat = self._tats.get(address)
        if tat is None:
            return 0.0
        now = time.monotonic_ns() // 1000
        wait = tat - self._params.burst_tolerance_us - now
        return wait / 1_000_000 if wait > 0 else 0.0

    def record_failure(self, address: str) -> None:
        now = time.monotonic_ns() // 1000
        tat = max(self._tats.pop(address, now), now)
        self._tats[address] = tat + self._params.emission_interval_us
        while len(self._tats) > self._max_addresses:
            self._tats.popitem(last=False)


def presented_key(headers: Iterable[tuple[bytes, bytes]]) -> str | None:
    """The key from `Authorization: Bearer …` or `X-API-Key`, read straight from the ASGI
    headers (one pass, no header object built)."""
    for name, value in headers:
        if name == b"authorization":
            scheme, _, credentials = value.decode("latin-1").partition(" ")
            if scheme.lower() == "bearer":
                return credentials.strip()
        elif name == b"x-api-key":
            return value.decode("latin-1").strip()
    return None


def require_scope(*needed: Scope) -> Callable[..., Awaitable[Caller]]:
    """A dependency admitting a caller whose key holds every scope in `needed`.

    The OpenAPI document declares the `bearer` and `apiKey` schemes for the routes using it
    (see `tenantry.api.app`); the dependency itself takes only the request, which keeps
    FastAPI's per-request dependency work to a minimum.
    """
    scopes = frozenset(needed)

    async def authenticated_caller(request: Request) -> Caller:
        runtime: ApiRuntime = request.app.state.runtime
        scope = request.scope
        return await runtime.admit(scope, presented_key(scope["headers"]), scopes)

    authenticated_caller.__tenantry_scopes__ = scopes  # type: ignore[attr-defined]
    return authenticated_caller


authenticated = require_scope()
"""A dependency admitting any valid key (for routes that need no particular scope)."""
