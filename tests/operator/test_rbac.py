"""Least privilege, proven: every call the operator and the API's registry source make is
granted by the chart's rules, and every rule is used.

The emulator records each request; the calls of every operator scenario in the session are
collected (see `conftest._record`), and this test adds a tour of its own so that it proves
the same when run alone. The chart is rendered by the real helm binary.
"""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tenantry.sources import RegistryHolder
from tenantry.sources.kubernetes import KubernetesRegistrySource
from tests.operator.conftest import (
    OPERATOR_AGENT,
    RECORDED_CALLS,
    Cluster,
    RunningOperator,
    _record,
    eventually,
)
from tests.operator.test_scenarios import (
    platform,
    policy,
    product,
    product_with,
    ready_tenant,
)

pytestmark = pytest.mark.operator

CHART = Path(__file__).resolve().parents[2] / "charts" / "tenantry"
API_AGENT = "tenantry-api"
# Granted for peering between operator replicas, which the scenarios run without
# (`standalone`): one active instance is a production concern the emulator cannot show.
PEERING_ONLY = {
    (verb, "kopf.dev", resource)
    for verb in ("get", "list", "watch", "patch")
    for resource in ("kopfpeerings", "clusterkopfpeerings")
}

STATUS_ROUTE = {"method": "GET", "path": "/status", "public": True}

Call = tuple[str, str, str]  # (verb, API group, resource[/subresource])


def granted(rules: list[dict[str, Any]]) -> set[Call]:
    calls = set()
    for rule in rules:
        for verb in rule.get("verbs", []):
            for group in rule.get("apiGroups", []):
                for resource in rule.get("resources", []):
                    assert "*" not in (verb, group, resource), f"wildcard in {rule}"
                    calls.add((verb, group, resource))
    return calls


def chart_rules(helm: str) -> dict[str, list[dict[str, Any]]]:
    rendered = subprocess.run(
        [helm, "template", "t", str(CHART)], check=True, capture_output=True, text=True
    ).stdout
    roles = {}
    for document in yaml.safe_load_all(rendered):
        if document and document.get("kind") in {"ClusterRole", "Role"}:
            roles[document["metadata"]["name"]] = document.get("rules") or []
    return roles


def used_by(agent_prefixes: tuple[str, ...]) -> set[Call]:
    return {
        (verb, group, resource)
        for agent, verb, group, resource in RECORDED_CALLS
        if agent.startswith(agent_prefixes)
    }


async def tour(cluster: Cluster) -> None:
    """Everything the operator and the source do, once: onboarding, a product, a policy edit,
    drift of each owned object, deletion of a tenant and of its policy."""
    holder = RegistryHolder()
    source = asyncio.create_task(KubernetesRegistrySource(cluster.platform_namespace).run(holder))
    ns, platform_ns = cluster.tenant_namespace, cluster.platform_namespace
    await cluster.create("ratelimitpolicies", platform_ns, policy("standard"))
    await cluster.create("apiplatforms", platform_ns, platform())
    await ready_tenant(cluster, "acme")
    await cluster.create("apiproducts", platform_ns, product("flights", STATUS_ROUTE))
    await product_with(cluster, "flights", "True", "Published")
    await cluster.patch(
        "ratelimitpolicies", platform_ns, "standard", {"spec": {"requestsPerMinute": 60}}
    )
    await cluster.delete("secrets", ns, "acme-api-keys")
    await eventually(lambda: cluster.get("secrets", ns, "acme-api-keys"), what="key Secret")
    await eventually(
        lambda: cluster.get("horizontalpodautoscalers", platform_ns, "tenantry-api"), what="HPA"
    )
    await cluster.patch(
        "horizontalpodautoscalers", platform_ns, "tenantry-api", {"spec": {"minReplicas": 9}}
    )
    await cluster.delete("apitenants", ns, "acme")

    async def gone() -> bool:
        return await cluster.get("apitenants", ns, "acme") is None

    await eventually(gone, what="acme deleted")
    await eventually(lambda: _true(holder.loaded), what="the source listed the registry")
    source.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await source


async def _true(value: bool) -> bool:
    return value


@pytest.mark.emulator_only
async def test_chart_rbac_grants_exactly_what_operator_and_api_use(
    cluster: Cluster, operator: RunningOperator, helm: str
) -> None:
    await tour(cluster)
    assert cluster.emulator is not None
    _record(cluster.emulator)
    roles = chart_rules(helm)
    [operator_role] = [name for name in roles if name.endswith("operator-default")]
    [api_role] = [name for name in roles if name.endswith("registry-reader")]

    operator_used = used_by(("kopf/", OPERATOR_AGENT))
    api_used = used_by((API_AGENT,))
    operator_granted = granted(roles[operator_role])
    api_granted = granted(roles[api_role])

    assert operator_used - operator_granted == set(), "the operator needs more than granted"
    assert operator_granted - operator_used - PEERING_ONLY == set(), "granted but never used"
    assert api_used - api_granted == set(), "the registry source needs more than granted"
    assert api_granted - api_used == set(), "granted to the API but never used"
