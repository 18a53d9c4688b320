"""Authentication: every way a key can be wrong has its own problem type, scopes are
enforced, and guessing keys from one address is cut off."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from tenantry.contract.keys import generate_key
from tenantry.contract.registry import Registry, RegistryKey, TenantEntry
from tests.api.conftest import Api, ServeApi, auth

pytestmark = pytest.mark.integration

PROBLEMS = "https://tenantry.io/problems/"


def _swap_checksum(key: str) -> str:
    last = key[-1]
    return key[:-1] + ("A" if last != "A" else "B")


@pytest.mark.parametrize(
    ("headers", "status", "problem", "detail_has"),
    [
        ({}, 401, "missing-api-key", "Authorization"),
        ({"Authorization": "Bearer "}, 401, "missing-api-key", "X-API-Key"),
        ({"X-API-Key": "sk_live_12345"}, 401, "malformed-api-key", "must start with 'tnt_'"),
        ({"X-API-Key": "tnt_short"}, 401, "malformed-api-key", "characters long"),
        ({"Authorization": "Bearer tnt_" + "!" * 62}, 401, "malformed-api-key", "must read"),
    ],
)
async def test_missing_and_malformed_keys_get_their_own_problem(
    api: Api, headers: dict[str, str], status: int, problem: str, detail_has: str
) -> None:
    response = await api.client.get("/v1/limits", headers=headers)
    assert response.status_code == status
    assert response.headers["content-type"] == "application/problem+json"
    body = response.json()
    assert body["type"] == PROBLEMS + problem
    assert detail_has in body["detail"]
    assert body["request_id"] == response.headers["x-request-id"]


async def test_a_mistyped_key_fails_its_checksum_without_revealing_anything(api: Api) -> None:
    key = _swap_checksum(api.key("alpha"))
    response = await api.client.get("/v1/limits", headers=auth(key))
    assert response.status_code == 401
    assert response.json()["type"] == PROBLEMS + "malformed-api-key"
    assert "checksum" in response.json()["detail"]
    assert key not in response.text


async def test_a_well_formed_key_nobody_issued_is_unknown(api: Api) -> None:
    response = await api.client.get("/v1/limits", headers=auth(generate_key().plaintext))
    assert response.status_code == 401
    assert response.json()["type"] == PROBLEMS + "unknown-api-key"


async def test_a_known_key_id_with_a_forged_secret_is_unknown(api: Api) -> None:
    real = api.key("alpha")
    forged = generate_key(key_id=real[4:16]).plaintext
    response = await api.client.get("/v1/limits", headers=auth(forged))
    assert response.json()["type"] == PROBLEMS + "unknown-api-key"


async def test_an_expired_key_is_refused_as_expired(api: Api) -> None:
    response = await api.client.get("/v1/limits", headers=auth(api.key("alpha", "old")))
    assert response.status_code == 401
    assert response.json()["type"] == PROBLEMS + "expired-api-key"
    assert "2020-01-01" in response.json()["detail"]


async def test_a_key_removed_from_the_tenant_is_refused_as_revoked(
    api: Api, manifests: object
) -> None:
    key = api.key("alpha", "jobs-only")
    assert (await api.client.get("/v1/limits", headers=auth(key))).status_code == 200
    path = api.settings.registry.manifests[0] / "tenants.yaml"
    text = path.read_text()
    path.write_text(text.replace("    - name: jobs-only\n      scopes: [jobs:read]\n", ""))
    api.reload()
    response = await api.client.get("/v1/limits", headers=auth(key))
    assert response.status_code == 401
    assert response.json()["type"] == PROBLEMS + "revoked-api-key"


async def test_a_rotated_key_past_its_grace_period_is_refused_as_revoked(api: Api) -> None:
    registry = api.runtime.holder.registry
    record = registry.lookup(api.key("alpha")[4:16])
    assert record is not None
    ended = record.key.model_copy(update={"valid_until": datetime.now(UTC) - timedelta(1)})
    tenant = record.tenant.model_copy(update={"keys": (ended,)})
    api.runtime.holder.publish(Registry.build([tenant]))
    response = await api.client.get("/v1/limits", headers=auth(api.key("alpha")))
    assert response.json()["type"] == PROBLEMS + "revoked-api-key"
    assert "grace period" in response.json()["detail"]


async def test_a_suspended_tenants_keys_are_refused(api: Api) -> None:
    response = await api.client.get("/v1/limits", headers=auth(api.key("frozen")))
    assert response.status_code == 403
    assert response.json()["type"] == PROBLEMS + "tenant-suspended"


async def test_a_tenant_whose_policy_is_missing_is_refused(api: Api) -> None:
    key = generate_key()
    entry = TenantEntry(
        tenant_id="team-t/orphan",
        display_name="Orphan",
        tier="gone",
        limits=None,
        keys=(RegistryKey(key_id=key.key_id, key_hash=key.hash, name="main"),),
    )
    api.runtime.holder.publish(Registry.build([entry]))
    response = await api.client.get("/v1/limits", headers=auth(key.plaintext))
    assert response.status_code == 403
    assert response.json()["type"] == PROBLEMS + "policy-unresolved"
    assert "'gone'" in response.json()["detail"]


async def test_a_key_without_the_routes_scope_gets_403_naming_it(api: Api) -> None:
    response = await api.client.get("/v1/usage", headers=auth(api.key("alpha", "jobs-only")))
    assert response.status_code == 403
    body = response.json()
    assert body["type"] == PROBLEMS + "insufficient-scope"
    assert body["missing_scopes"] == ["usage:read"]
    assert "usage:read" in body["detail"]


async def test_x_api_key_header_authenticates_too(api: Api) -> None:
    response = await api.client.get("/v1/limits", headers={"X-API-Key": api.key("open")})
    assert response.status_code == 200
    assert response.json()["tenant"] == "team-t/open"


async def test_a_burst_of_wrong_keys_from_one_address_is_cut_off(api: Api) -> None:
    statuses = []
    for _ in range(15):
        response = await api.client.get("/v1/limits", headers=auth(generate_key().plaintext))
        statuses.append(response.status_code)
    burst = api.settings.api.auth_failures_burst
    assert statuses[: burst + 1] == [401] * (burst + 1)
    assert set(statuses[burst + 1 :]) == {429}
    # Now even a valid key from that address waits: guessing gains nothing.
    blocked = await api.client.get("/v1/limits", headers=auth(api.key("open")))
    assert blocked.status_code == 429
    assert blocked.json()["type"] == PROBLEMS + "too-many-authentication-failures"
    assert int(blocked.headers["retry-after"]) >= 1


async def test_a_spoofed_forwarded_for_from_an_untrusted_peer_does_not_evade_the_limit(
    api: Api,
) -> None:
    statuses = []
    for attempt in range(15):
        response = await api.client.get(
            "/v1/limits",
            headers={**auth(generate_key().plaintext), "X-Forwarded-For": f"198.51.100.{attempt}"},
        )
        statuses.append(response.status_code)
    assert statuses[-1] == 429


async def test_forwarded_for_is_believed_from_a_trusted_proxy(
    serve_api: ServeApi, database_url: str, redis_url: str
) -> None:
    async with serve_api(
        database_url=database_url,
        redis_url=redis_url,
        client_address=("10.0.0.5", 40000),
        trusted_proxies=["10.0.0.0/8"],
    ) as api:
        for attempt in range(15):
            response = await api.client.get(
                "/v1/limits",
                headers={
                    **auth(generate_key().plaintext),
                    # A client-written entry on the left, the proxy's own hop on the right.
                    "X-Forwarded-For": f"6.6.6.6, 198.51.100.{attempt}, 10.0.0.9",
                },
            )
            assert response.status_code == 401  # each real client is its own address
        # The same real client, over and over, is cut off even through the proxy.
        for _ in range(15):
            last = await api.client.get(
                "/v1/limits",
                headers={**auth(generate_key().plaintext), "X-Forwarded-For": "198.51.100.99"},
            )
        assert last.status_code == 429
