"""Scenarios of the operator, as a platform team and its tenants live them."""

from __future__ import annotations

from typing import Any

import pytest

from tests.operator.conftest import Cluster, RunningOperator, eventually

pytestmark = pytest.mark.operator


def policy(name: str, **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "tenantry.io/v1alpha1",
        "kind": "RateLimitPolicy",
        "metadata": {"name": name},
        "spec": {"requestsPerMinute": 600, "burst": 50, **spec},
    }


def tenant(name: str, policy_name: str = "standard", **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "tenantry.io/v1alpha1",
        "kind": "ApiTenant",
        "metadata": {"name": name},
        "spec": {
            "displayName": name.title(),
            "policyRef": {"name": policy_name},
            "keys": [{"name": "production"}],
            **spec,
        },
    }


def condition(obj: dict[str, Any] | None, type_: str) -> dict[str, Any]:
    for item in ((obj or {}).get("status") or {}).get("conditions") or []:
        if item["type"] == type_:
            return dict(item)
    return {}


async def test_tenant_becomes_ready_with_keys_and_registry_entry(
    cluster: Cluster, operator: RunningOperator
) -> None:
    await cluster.create("ratelimitpolicies", cluster.platform_namespace, policy("standard"))
    await cluster.create("apitenants", cluster.tenant_namespace, tenant("acme"))

    async def ready() -> dict[str, Any] | None:
        found = await cluster.get("apitenants", cluster.tenant_namespace, "acme")
        return found if condition(found, "Ready").get("status") == "True" else None

    found = await eventually(ready, what="acme Ready")
    print(found)
