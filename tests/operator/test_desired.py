"""The operator's desired state, pure: merge patches, conditions, key Secret, HPAs, status."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tenantry.contract.issuance import KeySecretState, desired_key_state
from tenantry.contract.resources import ApiPlatform, ApiTenant, EffectiveLimits
from tenantry.operator import desired

NOW = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)


def apply_merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386, section 2, as the API server applies it."""
    if not isinstance(patch, dict):
        return patch
    result = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = apply_merge_patch(result.get(key), value)
    return result


def contains(document: Any, wanted: Any) -> bool:
    if isinstance(wanted, dict):
        return isinstance(document, dict) and all(
            (key not in document) if value is None else contains(document.get(key), value)
            for key, value in wanted.items()
        )
    return bool(document == wanted)


@pytest.mark.parametrize(
    ("current", "wanted", "patch"),
    [
        ({"a": 1}, {"a": 1}, {}),
        ({"a": 1}, {"a": 2}, {"a": 2}),
        ({"a": 1, "server": "default"}, {"a": 1}, {}),
        ({"a": 1}, {"a": None}, {"a": None}),
        ({}, {"a": None}, {}),
        ({"m": {"x": 1, "y": 2}}, {"m": {"x": 1, "y": None}}, {"m": {"y": None}}),
        ({"m": {"x": 1}}, {"m": {"x": 1, "z": 3}}, {"m": {"z": 3}}),
        ({}, {"m": {"x": 1, "gone": None}}, {"m": {"x": 1}}),
        ({"l": [1, 2]}, {"l": [1]}, {"l": [1]}),
    ],
)
def test_merge_patch_changes_only_what_differs(
    current: dict[str, Any], wanted: dict[str, Any], patch: dict[str, Any]
) -> None:
    assert desired.merge_patch(current, wanted) == patch


json_values = st.recursive(
    st.none() | st.integers() | st.text(max_size=3),
    lambda children: st.dictionaries(st.text("abc", max_size=2), children, max_size=3),
    max_leaves=8,
)
documents = st.dictionaries(st.text("abc", max_size=2), json_values, max_size=4)


# Generating nested documents is slow on a loaded machine; that is no failure of the code.
@settings(deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(documents, documents)
def test_applying_the_merge_patch_yields_what_is_wanted(
    current: dict[str, Any], wanted: dict[str, Any]
) -> None:
    patched = apply_merge_patch(current, desired.merge_patch(current, wanted))
    assert contains(patched, wanted)
    assert desired.merge_patch(patched, wanted) == {}


def test_condition_keeps_its_transition_time_while_the_status_holds() -> None:
    first = desired.condition([], "Ready", True, "Ready", "ok", 1, NOW)
    later = desired.condition([first], "Ready", True, "Suspended", "paused", 2, NOW + timedelta(1))
    assert later["lastTransitionTime"] == first["lastTransitionTime"]
    assert (later["reason"], later["message"], later["observedGeneration"]) == (
        "Suspended",
        "paused",
        2,
    )
    flipped = desired.condition(
        [later], "Ready", False, "PolicyNotFound", "x", 3, NOW + timedelta(2)
    )
    assert flipped["lastTransitionTime"] != first["lastTransitionTime"]
    assert flipped["status"] == "False"


def tenant(**spec: Any) -> ApiTenant:
    return ApiTenant.model_validate(
        {
            "metadata": {"name": "acme", "namespace": "team-a", "generation": 3, "uid": "u1"},
            "spec": {"displayName": "Acme", "policyRef": {"name": "standard"}, **spec},
        }
    )


def test_key_secret_removes_revoked_keys_and_is_owned_by_the_tenant() -> None:
    acme = tenant(keys=[{"name": "production"}])
    state = desired_key_state(acme, None, NOW)
    body = {
        "apiVersion": "tenantry.io/v1alpha1",
        "kind": "ApiTenant",
        "metadata": {"name": "acme", "uid": "u1"},
    }

    manifest = desired.key_secret(acme, body, state, ["production", "ci"])

    assert manifest["metadata"]["name"] == "acme-api-keys"
    assert manifest["data"]["ci"] is None
    assert desired.secret_strings({"data": {"k": manifest["data"]["production"]}})["k"] == (
        state.keys["production"].plaintext
    )
    [owner] = manifest["metadata"]["ownerReferences"]
    assert (owner["kind"], owner["uid"], owner["controller"]) == ("ApiTenant", "u1", True)
    assert (
        "ownerReferences" not in desired.key_secret(acme, {"metadata": {}}, state, [])["metadata"]
    )


def limits() -> EffectiveLimits:
    return EffectiveLimits(
        requests_per_minute=600,
        max_concurrent_jobs=4,
        job_priority="default",
        reserved_requests_per_second=0.0,
        failure_mode="open",
    )


@pytest.mark.parametrize(
    ("spec", "policy_found", "ready", "reason"),
    [
        ({}, True, "True", "Ready"),
        ({"suspended": True}, True, "True", "Suspended"),
        ({}, False, "False", "PolicyNotFound"),
    ],
)
def test_tenant_status_says_why_it_is_or_is_not_ready(
    spec: dict[str, Any], policy_found: bool, ready: str, reason: str
) -> None:
    acme = tenant(keys=[{"name": "production"}], **spec)
    state = desired_key_state(acme, None, NOW)
    status = desired.tenant_status(
        acme,
        {},
        policy_found=policy_found,
        policy_message="m",
        keys=state,
        keys_reissued=False,
        limits=limits() if policy_found else None,
        now=NOW,
    )
    conditions = {c["type"]: c for c in status["conditions"]}
    assert (conditions["Ready"]["status"], conditions["Ready"]["reason"]) == (ready, reason)
    assert status["observedGeneration"] == 3
    assert status["keyCount"] == 1
    assert status["keys"][0]["keyId"] == state.keys["production"].key_id
    assert state.keys["production"].plaintext not in str(status)


def test_reissued_keys_are_named_in_the_keys_condition() -> None:
    acme = tenant(keys=[{"name": "production"}])
    status = desired.tenant_status(
        acme,
        {},
        policy_found=True,
        policy_message="",
        keys=KeySecretState(),
        keys_reissued=True,
        limits=limits(),
        now=NOW,
    )
    keys = next(c for c in status["conditions"] if c["type"] == "KeysIssued")
    assert keys["reason"] == "KeysReissued"


def platform(**api: Any) -> ApiPlatform:
    return ApiPlatform.model_validate(
        {
            "metadata": {"name": "tenantry", "namespace": "tenantry-system"},
            "spec": {
                "api": {
                    "deployment": "tenantry-api",
                    "minReplicas": 2,
                    "maxReplicas": 20,
                    "capacityPerReplica": 100,
                    **api,
                },
                "worker": {"deployment": "tenantry-worker", "capacityPerReplica": 8},
            },
        }
    )


@pytest.mark.parametrize(
    ("reserved", "floor"),
    [(0, 2), (150, 2), (250, 3), (1000, 10), (999_999, 20)],
)
def test_hpa_floor_is_reserved_capacity_over_replica_capacity_within_bounds(
    reserved: float, floor: int
) -> None:
    hpa = desired.desired_hpa(platform(), {"metadata": {}}, "api", reserved)
    assert hpa["spec"]["minReplicas"] == floor
    assert hpa["spec"]["maxReplicas"] == 20
    assert hpa["spec"]["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": "tenantry-api",
    }
    assert hpa["spec"]["behavior"] is None  # removed from an existing HPA by the merge patch


def test_hpa_takes_cpu_target_and_behavior_from_the_platform() -> None:
    behavior = {"scaleDown": {"stabilizationWindowSeconds": 300}}
    hpa = desired.desired_hpa(
        platform(targetCpuUtilizationPercent=55, behavior=behavior), {"metadata": {}}, "api", 0
    )
    [metric] = hpa["spec"]["metrics"]
    assert metric["resource"]["target"]["averageUtilization"] == 55
    assert hpa["spec"]["behavior"] == behavior


def test_platform_status_shows_the_arithmetic() -> None:
    status = desired.platform_status(
        platform(), {}, active_tenants=3, reserved_rps=250, reserved_jobs=17, now=NOW
    )
    assert status["api"] == {
        "reserved": 250,
        "capacityPerReplica": 100,
        "minReplicas": 3,
        "maxReplicas": 20,
    }
    assert status["worker"]["minReplicas"] == 3  # 17 slots / 8 per replica, rounded up
    assert status["activeTenants"] == 3
