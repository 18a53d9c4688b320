"""The registry format: sharded, hashes only, a bad shard rejects the whole snapshot."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest

from tenantry.contract.keys import generate_key
from tenantry.contract.registry import (
    PRODUCTS_SHARD,
    SHARD_BUDGET_BYTES,
    ProductEntry,
    Registry,
    RegistryError,
    RegistryKey,
    TenantEntry,
    encode_entry,
    encode_product,
    encode_shards,
    tenant_entry,
)
from tenantry.contract.resources import ApiTenant, HttpMethod, RateLimitPolicy, UpstreamRoute


def _entry(tenant_id: str, key_count: int = 1) -> tuple[TenantEntry, list[str]]:
    keys = [generate_key() for _ in range(key_count)]
    entry = TenantEntry(
        tenant_id=tenant_id,
        display_name=tenant_id,
        tier="standard",
        keys=tuple(
            RegistryKey(key_id=k.key_id, key_hash=k.hash, name=f"k{i}") for i, k in enumerate(keys)
        ),
    )
    return entry, [k.plaintext for k in keys]


def test_encoded_shards_decode_to_the_same_registry_without_plaintext() -> None:
    entries, plaintexts = zip(
        *(_entry(f"team-{i % 7}/tenant-{i}", 2) for i in range(200)), strict=True
    )
    shards = encode_shards(entries, shard_count=8)
    assert len(shards) == 8
    assert all(shards.values())  # 200 tenants spread over every shard
    registry = Registry.decode(shards)
    assert registry.tenants == Registry.build(entries).tenants
    assert registry.version == Registry.build(entries).version
    blob = json.dumps(shards)
    assert not any(p in blob for keys in plaintexts for p in keys)


def test_lookup_by_key_id_finds_the_key_and_its_tenant() -> None:
    entry, _ = _entry("team-a/acme", 3)
    registry = Registry.build([entry])
    record = registry.lookup(entry.keys[1].key_id)
    assert record is not None
    assert record.tenant.tenant_id == "team-a/acme"
    assert record.key.name == "k1"
    assert registry.lookup("unknownid000") is None


def test_a_corrupt_entry_rejects_the_whole_snapshot_naming_it() -> None:
    entry, _ = _entry("team-a/acme")
    shards = encode_shards([entry], shard_count=2)
    shard = next(name for name, data in shards.items() if data)
    shards[shard]["team-a.acme"] = '{"tenantId": "team-a/acme"}'
    with pytest.raises(RegistryError, match=f"{shard}/team-a.acme"):
        Registry.decode(shards)


def test_one_key_id_in_two_tenants_is_refused() -> None:
    first, _ = _entry("team-a/acme")
    second = first.model_copy(update={"tenant_id": "team-b/globex"})
    with pytest.raises(RegistryError, match="is also held by"):
        Registry.build([first, second])


def test_a_shard_over_budget_is_refused_with_what_to_change() -> None:
    entries = [_entry(f"team/t-{i}", 100)[0] for i in range(60)]
    with pytest.raises(RegistryError, match=r"raise registry\.shardCount"):
        encode_shards(entries, shard_count=1)
    assert SHARD_BUDGET_BYTES < 1024 * 1024 * 3 // 4  # base64 of the budget stays under 1 MiB


def test_key_in_rotation_grace_or_expired_is_usable_only_until_then() -> None:
    now = datetime(2026, 1, 1, tzinfo=UTC)
    key = RegistryKey(
        key_id="a" * 12, key_hash="sha256:x", name="k", valid_until=now + timedelta(hours=1)
    )
    assert key.usable_at(now)
    assert not key.usable_at(now + timedelta(hours=1))
    expired = key.model_copy(update={"valid_until": None, "expires_at": now})
    assert not expired.usable_at(now)


def test_tenant_entry_applies_overrides_and_has_no_limits_without_a_policy() -> None:
    tenant = ApiTenant.model_validate(
        {
            "kind": "ApiTenant",
            "metadata": {"name": "acme", "namespace": "team-a", "generation": 3},
            "spec": {
                "displayName": "Acme",
                "policyRef": {"name": "standard"},
                "overrides": {"monthlyQuota": 5},
                "allowedOrigins": ["https://app.acme.example"],
            },
        }
    )
    policy = RateLimitPolicy.model_validate(
        {
            "kind": "RateLimitPolicy",
            "metadata": {"name": "standard"},
            "spec": {"requestsPerMinute": 60},
        }
    )
    entry = tenant_entry(tenant, policy, [], "whsec")
    assert entry.tenant_id == "team-a/acme"
    assert entry.limits is not None
    assert entry.limits.monthly_quota == 5
    assert entry.allowed_origins == ("https://app.acme.example",)
    assert entry.generation == 3
    assert tenant_entry(tenant, None, [], "whsec").limits is None


def test_equal_registries_have_equal_versions_whatever_the_order_of_scopes() -> None:
    scopes = ["jobs:read", "reports:write", "usage:read"]
    first = RegistryKey(key_id="a" * 12, key_hash="sha256:x", name="k", scopes=frozenset(scopes))
    second = first.model_copy(update={"scopes": frozenset(reversed(scopes))})
    entry = TenantEntry(tenant_id="t/a", display_name="a", tier="s", keys=(first,))
    assert (
        Registry.build([entry]).version
        == Registry.build([entry.model_copy(update={"keys": (second,)})]).version
    )
    assert encode_entry(entry).count('"scopes":["jobs:read","reports:write","usage:read"]') == 1


def _product(name: str, *paths: str) -> ProductEntry:
    routes = tuple(UpstreamRoute(method=HttpMethod.GET, path=path) for path in paths)
    return ProductEntry(name=name, routes=routes)


def test_products_travel_beside_the_shards_and_change_the_version() -> None:
    entry, _ = _entry("team-a/acme")
    shards = encode_shards([entry], shard_count=2)
    flights = _product("flights", "/flights/{flight_id}", "/status")
    with_products = shards | {PRODUCTS_SHARD: {"flights": encode_product(flights)}}
    registry = Registry.decode(with_products)
    assert registry.products == {"flights": flights}
    assert [r.route.path for r in registry.product_routes.routes] == [
        "/flights/{flight_id}",
        "/status",
    ]
    assert registry.version != Registry.decode(shards).version


def test_a_product_under_another_name_rejects_the_snapshot() -> None:
    stored = {PRODUCTS_SHARD: {"flights": encode_product(_product("trains", "/trains"))}}
    with pytest.raises(RegistryError, match=f"{PRODUCTS_SHARD}/flights: holds product trains"):
        Registry.decode(stored)


def test_a_route_two_products_declare_goes_to_the_first_by_name_and_the_other_is_told() -> None:
    merged = Registry.build(
        [],
        [
            _product("zeppelins", "/flights/{code}", "/airships"),
            _product("flights", "/flights/{id}"),
        ],
    ).product_routes
    assert {(r.product, r.route.path) for r in merged.routes} == {
        ("flights", "/flights/{id}"),
        ("zeppelins", "/airships"),
    }
    assert merged.conflicts == {
        "zeppelins": (
            "GET /flights/{code} is already served for product 'flights' (GET /flights/{id})",
        )
    }
