"""The registry: what the API and the worker need to know about every tenant.

The operator (and, in `tenantry dev`, the file source) writes it; the API and the worker read
it. In Kubernetes it is a set of Secrets labelled `tenantry.io/registry` in the platform
namespace. A tenant's entry lives in exactly one shard (chosen by a stable hash of its id), as
one data key `<namespace>.<name>` holding the entry's compact JSON, so no shard nears the
1 MiB object limit and a change to one tenant rewrites one shard.

The products behind the gateway check (`ApiProduct`) live beside the shards in one Secret of
their own, `tenantry-registry-products`, one data key per product name. Merged, their routes
are the upstream's route table: where two products declare the same route, the product whose
name sorts first keeps it, and the other's copy is reported as a conflict.

Only key *hashes* are here; plaintext keys exist only in each tenant's own key Secret.
"""

from __future__ import annotations

import hashlib
import json
import zlib
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import TypeVar

from pydantic import Field, ValidationError, field_serializer

from tenantry.contract.policy import effective_limits
from tenantry.contract.resources import (
    ApiProduct,
    ApiTenant,
    ContractModel,
    EffectiveLimits,
    RateLimitPolicy,
    UpstreamRoute,
    route_shape,
)

REGISTRY_LABEL = "tenantry.io/registry"
SHARD_PREFIX = "tenantry-registry-"
PRODUCTS_SHARD = f"{SHARD_PREFIX}products"
# Keep each shard well under the 1 MiB Secret limit (base64 adds a third).
SHARD_BUDGET_BYTES = 512 * 1024


class RegistryError(ValueError):
    """A registry that cannot be served; the message names the shard and the entry."""


class RegistryKey(ContractModel):
    key_id: str
    key_hash: str
    name: str
    scopes: frozenset[str] | None = None  # None: every scope
    expires_at: datetime | None = None
    # A rotated key's previous secret stays valid until then (a separate entry, same name).
    valid_until: datetime | None = None

    @field_serializer("scopes")
    def _scopes_in_order(self, scopes: frozenset[str] | None) -> list[str] | None:
        """A set has no order; the encoded entry must, or equal registries hash apart."""
        return sorted(scopes) if scopes is not None else None

    def holds(self, scope: str) -> bool:
        return self.scopes is None or scope in self.scopes

    def usable_at(self, now: datetime) -> bool:
        ends = [t for t in (self.expires_at, self.valid_until) if t is not None]
        return all(now < end for end in ends)


class TenantEntry(ContractModel):
    tenant_id: str = Field(description="`<namespace>/<name>` of the ApiTenant.")
    display_name: str
    tier: str
    suspended: bool = False
    # None when the tenant's policy cannot be resolved: its keys are then refused.
    limits: EffectiveLimits | None = None
    allowed_origins: tuple[str, ...] = ()
    keys: tuple[RegistryKey, ...] = ()
    webhook_signing_secret: str = ""
    generation: int = 0

    @property
    def data_key(self) -> str:
        return tenant_data_key(self.tenant_id)


class ProductEntry(ContractModel):
    """A product's routes as the API serves them."""

    name: str
    routes: tuple[UpstreamRoute, ...]
    generation: int = 0


@dataclass(frozen=True, slots=True)
class ProductRoute:
    """One route of the merged table, and the product declaring it."""

    product: str
    route: UpstreamRoute


@dataclass(frozen=True)
class ProductRoutes:
    """Every product's routes merged into one table, and the copies that lost (a route two
    products declare goes to the product whose name sorts first)."""

    routes: tuple[ProductRoute, ...]
    conflicts: Mapping[str, tuple[str, ...]]  # product name -> what it lost, said for a user

    @classmethod
    def merge(cls, products: Iterable[ProductEntry]) -> ProductRoutes:
        kept: dict[tuple[str, str], ProductRoute] = {}
        conflicts: dict[str, list[str]] = {}
        for product in sorted(products, key=lambda p: p.name):
            for route in product.routes:
                key = (route.method.value, route_shape(route.path))
                winner = kept.setdefault(key, ProductRoute(product.name, route))
                if winner.product != product.name:
                    conflicts.setdefault(product.name, []).append(
                        f"{route.method.value} {route.path} is already served for product "
                        f"{winner.product!r} ({winner.route.method.value} {winner.route.path})"
                    )
        return cls(tuple(kept.values()), {k: tuple(v) for k, v in conflicts.items()})


def product_entry(product: ApiProduct) -> ProductEntry:
    return ProductEntry(
        name=product.name,
        routes=tuple(product.spec.routes),
        generation=product.metadata.generation or 0,
    )


def encode_product(product: ProductEntry) -> str:
    return json.dumps(product.to_manifest(), separators=(",", ":"), sort_keys=True)


def tenant_id_of(namespace: str, name: str) -> str:
    return f"{namespace}/{name}"


def tenant_data_key(tenant_id: str) -> str:
    """The Secret data key of a tenant: namespaces have no dots, so the first dot splits."""
    return tenant_id.replace("/", ".", 1)


def shard_index(tenant_id: str, shard_count: int) -> int:
    return zlib.crc32(tenant_id.encode()) % shard_count


def shard_name(index: int) -> str:
    return f"{SHARD_PREFIX}{index:04d}"


def encode_entry(entry: TenantEntry) -> str:
    return json.dumps(entry.to_manifest(), separators=(",", ":"), sort_keys=True)


def encode_shards(entries: Iterable[TenantEntry], shard_count: int) -> dict[str, dict[str, str]]:
    """`{shard name: {data key: entry JSON}}` for every shard, empty ones included."""
    shards: dict[str, dict[str, str]] = {shard_name(i): {} for i in range(shard_count)}
    for entry in entries:
        shards[shard_name(shard_index(entry.tenant_id, shard_count))][entry.data_key] = (
            encode_entry(entry)
        )
    for name, data in shards.items():
        size = sum(len(k) + len(v) for k, v in data.items())
        if size > SHARD_BUDGET_BYTES:
            raise RegistryError(
                f"{name}: {size} bytes exceeds the {SHARD_BUDGET_BYTES}-byte shard budget; "
                "raise registry.shardCount"
            )
    return shards


@dataclass(frozen=True)
class KeyRecord:
    """What the request path finds by key id: the key and the tenant holding it."""

    key: RegistryKey
    tenant: TenantEntry


@dataclass(frozen=True)
class Registry:
    """An immutable snapshot; the API swaps whole snapshots, never edits one in place."""

    tenants: Mapping[str, TenantEntry]
    version: str
    by_key_id: Mapping[str, KeyRecord] = field(repr=False)
    products: Mapping[str, ProductEntry] = field(default_factory=dict)
    product_routes: ProductRoutes = field(default_factory=lambda: ProductRoutes((), {}), repr=False)

    @classmethod
    def build(
        cls, entries: Iterable[TenantEntry], products: Iterable[ProductEntry] = ()
    ) -> Registry:
        tenants: dict[str, TenantEntry] = {}
        by_key_id: dict[str, KeyRecord] = {}
        digest = hashlib.sha256()
        by_name: dict[str, ProductEntry] = {}
        for product in sorted(products, key=lambda p: p.name):
            if product.name in by_name:
                raise RegistryError(f"product {product.name}: listed twice")
            by_name[product.name] = product
            digest.update(encode_product(product).encode())
        for entry in sorted(entries, key=lambda e: e.tenant_id):
            if entry.tenant_id in tenants:
                raise RegistryError(f"tenant {entry.tenant_id}: listed twice")
            tenants[entry.tenant_id] = entry
            digest.update(encode_entry(entry).encode())
            for key in entry.keys:
                if key.key_id in by_key_id:
                    other = by_key_id[key.key_id].tenant.tenant_id
                    raise RegistryError(
                        f"tenant {entry.tenant_id}: key id {key.key_id} is also held by {other}"
                    )
                by_key_id[key.key_id] = KeyRecord(key, entry)
        return cls(
            tenants=tenants,
            version=digest.hexdigest()[:16],
            by_key_id=by_key_id,
            products=by_name,
            product_routes=ProductRoutes.merge(by_name.values()),
        )

    @classmethod
    def decode(cls, shards: Mapping[str, Mapping[str, str]]) -> Registry:
        """Parse `{shard name: {data key: entry JSON}}` (the products' Secret among them); any
        bad entry rejects the whole set."""
        entries: list[TenantEntry] = []
        products: list[ProductEntry] = []
        for shard, data in sorted(shards.items()):
            if shard == PRODUCTS_SHARD:
                products.extend(_decoded(shard, data, ProductEntry, "product", lambda p: p.name))
            else:
                entries.extend(
                    _decoded(
                        shard, data, TenantEntry, "tenant", lambda e: e.tenant_id, tenant_data_key
                    )
                )
        return cls.build(entries, products)

    def lookup(self, key_id: str) -> KeyRecord | None:
        return self.by_key_id.get(key_id)


Decoded = TypeVar("Decoded", TenantEntry, ProductEntry)


def _product_name(product: ProductEntry) -> str:
    return product.name


def _tenant_id(entry: TenantEntry) -> str:
    return entry.tenant_id


def _decoded(
    shard: str,
    data: Mapping[str, str],
    model: type[Decoded],
    what: str,
    name_of: Callable[[Decoded], str],
    data_key_of: Callable[[str], str] = lambda name: name,
) -> Iterator[Decoded]:
    """The entries of one registry Secret, each checked to sit under its own data key."""
    for data_key, raw in sorted(data.items()):
        try:
            decoded = model.model_validate_json(raw)
        except ValidationError as error:
            raise RegistryError(f"{shard}/{data_key}: {error}") from error
        name = name_of(decoded)
        if data_key_of(name) != data_key:
            raise RegistryError(f"{shard}/{data_key}: holds {what} {name}, not {data_key}")
        yield decoded


EMPTY_REGISTRY = Registry.build([])


def tenant_entry(
    tenant: ApiTenant,
    policy: RateLimitPolicy | None,
    keys: Iterable[RegistryKey],
    webhook_signing_secret: str,
) -> TenantEntry:
    """The registry entry of a tenant: the one reconcile step the operator and the file
    source share. Without a policy the entry has no limits, and the API refuses its keys."""
    namespace = tenant.metadata.namespace
    if namespace is None:
        raise RegistryError(f"ApiTenant {tenant.name}: metadata.namespace is required")
    return TenantEntry(
        tenant_id=tenant_id_of(namespace, tenant.name),
        display_name=tenant.spec.display_name,
        tier=tenant.spec.policy_ref.name,
        suspended=tenant.spec.suspended,
        limits=effective_limits(policy.spec, tenant.spec.overrides) if policy else None,
        allowed_origins=tuple(tenant.spec.allowed_origins),
        keys=tuple(keys),
        webhook_signing_secret=webhook_signing_secret,
        generation=tenant.metadata.generation or 0,
    )
