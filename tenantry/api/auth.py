"""Who is calling: the presented API key, the registry record it stands for, its scopes, and
the client address that failed authentication too often.

These are steps; the admission layer (`tenantry.api.admission`) runs them in order for every
protected route. Keys come from `Authorization: Bearer <key>` or `X-API-Key: <key>`.
"""

from __future__ import annotations

import time
from collections import OrderedDict, deque
from collections.abc import Iterable, MutableMapping
from dataclasses import dataclass
from datetime import UTC, datetime
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network, ip_address
from typing import Any

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
from tenantry.contract.policy import gcra_decide, gcra_params
from tenantry.contract.registry import EMPTY_REGISTRY, KeyRecord, Registry, RegistryKey, TenantEntry
from tenantry.contract.resources import EffectiveLimits

TrustedNetwork = IPv4Network | IPv6Network

REVOKED_IDS_KEPT = 10_000

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
class AdmittedCaller:
    """The caller the admission layer admitted: its tenant entry, the key it used, and its
    effective limits. Handlers receive it as a `Caller` parameter."""

    tenant: TenantEntry
    key: RegistryKey
    limits: EffectiveLimits

    # What a plug-in reads; these names are part of the plug-in contract and stay stable.

    @property
    def tenant_id(self) -> str:
        """`<namespace>/<name>` of the tenant's `ApiTenant`."""
        return self.tenant.tenant_id

    @property
    def namespace(self) -> str:
        return self.tenant.tenant_id.partition("/")[0]

    @property
    def name(self) -> str:
        return self.tenant.tenant_id.partition("/")[2]

    @property
    def tier(self) -> str:
        """The name of the tenant's `RateLimitPolicy`."""
        return self.tenant.tier

    @property
    def key_name(self) -> str:
        return self.key.name

    @property
    def scopes(self) -> frozenset[str] | None:
        """The key's scopes; None when the key holds every scope."""
        return self.key.scopes

    def holds(self, scope: str) -> bool:
        return self.key.holds(scope)


class Authenticator:
    """The keys of the registry being served, and what is wrong with any other key.

    A key whose SHA-256 is known is known and intact (the secret carries 256 bits), so the
    common case costs one hash and one dict lookup, and finds the caller built when the
    registry arrived; anything else takes the full path that says precisely what is wrong.
    Ids of keys removed from the registry while this process ran are remembered (the newest
    `REVOKED_IDS_KEPT`), so a revoked key is told apart from one that never existed.
    """

    def __init__(self) -> None:
        self._registry = EMPTY_REGISTRY
        # key hash → the key's record, and its caller when its tenant may be admitted
        self._by_hash: dict[str, tuple[KeyRecord, AdmittedCaller | None]] = {}
        self._revoked: set[str] = set()
        self._revoked_order: deque[str] = deque()

    def use(self, registry: Registry) -> None:
        """Serve the keys of a new registry snapshot."""
        previous, current = set(self._registry.by_key_id), set(registry.by_key_id)
        for key_id in previous - current:
            self._revoked.add(key_id)
            self._revoked_order.append(key_id)
        self._revoked -= current
        while len(self._revoked_order) > REVOKED_IDS_KEPT:
            self._revoked.discard(self._revoked_order.popleft())
        self._registry = registry
        self._by_hash = {
            record.key.key_hash: (record, _admissible(record))
            for record in registry.by_key_id.values()
        }

    def authenticate(self, presented: str | None) -> AdmittedCaller:
        """The caller a presented key stands for, or a `ProblemError` saying what is wrong."""
        if not presented:
            raise ProblemError(
                MISSING_API_KEY, "send the key as `Authorization: Bearer <key>` or `X-API-Key`"
            )
        found = None
        if len(presented) == KEY_LENGTH and presented.isascii():
            found = self._by_hash.get(hash_key(presented))
        record, caller = found if found is not None else (self._identify(presented), None)
        stored = record.key
        if stored.valid_until is not None or stored.expires_at is not None:
            _check_validity(stored, datetime.now(UTC))
        if caller is not None:
            return caller
        tenant = record.tenant
        if tenant.suspended:
            raise ProblemError(TENANT_SUSPENDED, f"tenant {tenant.tenant_id} is suspended")
        if tenant.limits is None:
            raise ProblemError(
                POLICY_UNRESOLVED,
                f"tenant {tenant.tenant_id} refers to tier {tenant.tier!r}, which cannot be "
                "resolved",
            )
        return AdmittedCaller(tenant, stored, tenant.limits)

    def _identify(self, presented: str) -> KeyRecord:
        try:
            key = parse_key(presented)
        except MalformedApiKeyError as error:
            raise ProblemError(MALFORMED_API_KEY, str(error)) from None
        record = self._registry.lookup(key.key_id)
        if record is None:
            if key.key_id in self._revoked:
                raise ProblemError(REVOKED_API_KEY, f"key {key} has been revoked")
            raise ProblemError(UNKNOWN_API_KEY, f"no key {key} is known")
        if not verify_key(key, record.key.key_hash):
            raise ProblemError(UNKNOWN_API_KEY, f"no key {key} is known")
        return record


def _admissible(record: KeyRecord) -> AdmittedCaller | None:
    """The caller of a key whose tenant may be admitted (not suspended, its tier resolved)."""
    tenant = record.tenant
    if tenant.suspended or tenant.limits is None:
        return None
    return AdmittedCaller(tenant, record.key, tenant.limits)


def _check_validity(stored: RegistryKey, now: datetime) -> None:
    """Refuse a key past its rotation grace period or its expiry."""
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


def _public(key_id: str) -> str:
    return f"{PREFIX}{key_id}_…"


def check_scopes(key: RegistryKey, needed: Iterable[str]) -> None:
    missing = sorted(scope for scope in needed if not key.holds(scope))
    if missing:
        raise ProblemError(
            INSUFFICIENT_SCOPE,
            f"key {key.name!r} lacks the scope {', '.join(missing)}",
            extensions={"missing_scopes": missing},
        )


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
    """GCRA (the contract's `gcra_decide`) over failed authentications per client address,
    in process, on the monotonic clock.

    After `burst + 1` failures in a row an address is refused until its rate allows another
    attempt, whatever key it presents, so guessing keys does not pay. The table keeps at most
    `max_addresses` entries, evicting the least recently seen.
    """

    def __init__(self, per_minute: int, burst: int, max_addresses: int = 65_536) -> None:
        self._params = gcra_params(per_minute, burst)
        self._tats: OrderedDict[str, int] = OrderedDict()
        self._max_addresses = max_addresses

    @property
    def recorded(self) -> bool:
        """True once any address has failed (until then no address can be blocked)."""
        return bool(self._tats)

    def blocked_for(self, address: str) -> float:
        """Seconds until `address` may try again; 0 when it may now."""
        tat = self._tats.get(address)
        if tat is None:
            return 0.0
        step = gcra_decide(self._params, tat, time.monotonic_ns() // 1000)
        return step.retry_after_us / 1_000_000

    def record_failure(self, address: str) -> None:
        """Count a failure of an address that was not blocked (see `blocked_for`)."""
        step = gcra_decide(self._params, self._tats.pop(address, None), time.monotonic_ns() // 1000)
        self._tats[address] = step.tat_us
        while len(self._tats) > self._max_addresses:
            self._tats.popitem(last=False)
