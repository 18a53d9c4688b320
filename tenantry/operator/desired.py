"""What should exist, as pure functions of what is: no I/O, no clock, no randomness of their own.

Every function here takes the observed state (and `now`) and returns manifests, merge patches
or status stanzas. `reconcile` does the reading and the writing; keeping the two apart is what
lets these be tested exhaustively and lets a pass that finds nothing to change write nothing.
"""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from typing import Any, Literal

from tenantry.contract.issuance import KeySecretState, issued_keys, key_secret_name
from tenantry.contract.policy import min_replicas_for
from tenantry.contract.registry import (
    REGISTRY_LABEL,
    ProductEntry,
    TenantEntry,
    encode_entry,
    encode_product,
)
from tenantry.contract.resources import (
    API_VERSION,
    ApiPlatform,
    ApiProductStatus,
    ApiTenant,
    ApiTenantStatus,
    Condition,
    ConditionStatus,
    EffectiveLimits,
    RateLimitPolicyStatus,
    ScaledDeployment,
    ScalingStatus,
)

MANAGED_BY_LABEL = "app.kubernetes.io/managed-by"
MANAGED_BY = "tenantry-operator"
KEY_SECRET_LABEL = "tenantry.io/key-secret"  # noqa: S105 - a label name
TENANT_ANNOTATION = "tenantry.io/tenant"
HPA_ROLE_LABEL = "tenantry.io/scales"

Role = Literal["api", "worker"]

# Condition types and reasons, CamelCase as the API conventions ask.
READY = "Ready"
POLICY_RESOLVED = "PolicyResolved"
KEYS_ISSUED = "KeysIssued"
HPAS_APPLIED = "AutoscalersApplied"


# --- generic ---------------------------------------------------------------------------------


def merge_patch(current: Mapping[str, Any], desired: Mapping[str, Any]) -> dict[str, Any]:
    """The JSON merge patch (RFC 7386) that brings `current` to `desired`, or `{}`.

    Only keys named in `desired` are compared: what the API server or other controllers add
    (defaults, timestamps, other labels) is left alone, so a real server's defaulting never
    looks like drift. A `None` in `desired` removes that key when it is present.
    """
    patch: dict[str, Any] = {}
    for key, want in desired.items():
        have = current.get(key)
        if want is None:
            if key in current:
                patch[key] = None
        elif isinstance(want, Mapping) and isinstance(have, Mapping):
            nested = merge_patch(have, want)
            if nested:
                patch[key] = nested
        elif isinstance(want, Mapping):
            patch[key] = {k: v for k, v in want.items() if v is not None}
        elif have != want:
            patch[key] = want
    return patch


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def secret_strings(secret: Mapping[str, Any]) -> dict[str, str]:
    """A Secret's `data`, decoded. Entries that are not base64 text read as empty strings,
    which every consumer treats as damaged and replaces."""
    decoded: dict[str, str] = {}
    for name, value in (secret.get("data") or {}).items():
        try:
            decoded[name] = base64.b64decode(str(value), validate=True).decode()
        except ValueError:
            decoded[name] = ""
    return decoded


def digest(value: Any) -> str:
    """A short stable fingerprint of a JSON value, to recognise the echo of our own writes."""
    encoded = json.dumps(value, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(encoded.encode()).hexdigest()[:16]


def owner_reference(body: Mapping[str, Any]) -> list[dict[str, Any]] | None:
    """The controller reference to `body`, or None when the object has no uid yet."""
    metadata = body.get("metadata") or {}
    uid = metadata.get("uid")
    if not uid:
        return None
    return [
        {
            "apiVersion": body.get("apiVersion", API_VERSION),
            "kind": body.get("kind"),
            "name": metadata.get("name"),
            "uid": uid,
            "controller": True,
            "blockOwnerDeletion": True,
        }
    ]


def condition(
    existing: Iterable[Mapping[str, Any]],
    type_: str,
    status: bool,
    reason: str,
    message: str,
    generation: int | None,
    now: datetime,
) -> dict[str, Any]:
    """A condition whose `lastTransitionTime` moves only when its status changes."""
    new_status = ConditionStatus.TRUE if status else ConditionStatus.FALSE
    since = now.replace(microsecond=0)
    for old in existing:
        if old.get("type") == type_ and old.get("status") == new_status.value:
            kept = old.get("lastTransitionTime")
            if isinstance(kept, str):
                return Condition(
                    type=type_,
                    status=new_status,
                    reason=reason,
                    message=message,
                    observed_generation=generation,
                    last_transition_time=datetime.fromisoformat(kept),
                ).to_manifest() | {"lastTransitionTime": kept}
    return Condition(
        type=type_,
        status=new_status,
        reason=reason,
        message=message,
        observed_generation=generation,
        last_transition_time=since,
    ).to_manifest()


def ready_reason(conditions: Iterable[Mapping[str, Any]]) -> str | None:
    for item in conditions:
        if item.get("type") == READY:
            return str(item.get("reason"))
    return None


# --- tenants ---------------------------------------------------------------------------------


def key_secret(
    tenant: ApiTenant,
    owner: Mapping[str, Any],
    state: KeySecretState,
    existing_names: Iterable[str],
) -> dict[str, Any]:
    """The key Secret beside the tenant: one entry per key plus the webhook signing secret.

    Entries of the existing Secret that are no longer wanted (a revoked key) are set to None,
    which the merge patch turns into a removal.
    """
    data, annotations = state.to_secret()
    encoded: dict[str, Any] = {name: None for name in existing_names if name not in data}
    encoded |= {name: b64(value) for name, value in data.items()}
    manifest: dict[str, Any] = {
        "apiVersion": "v1",
        "kind": "Secret",
        "type": "Opaque",
        "metadata": {
            "name": key_secret_name(tenant.name),
            "namespace": tenant.metadata.namespace,
            "labels": {MANAGED_BY_LABEL: MANAGED_BY, KEY_SECRET_LABEL: "true"},
            "annotations": annotations | {TENANT_ANNOTATION: tenant.name},
        },
        "data": encoded,
    }
    references = owner_reference(owner)
    if references is not None:
        manifest["metadata"]["ownerReferences"] = references
    return manifest


def tenant_status(
    tenant: ApiTenant,
    existing: Mapping[str, Any],
    *,
    policy_found: bool,
    policy_message: str,
    keys: KeySecretState,
    keys_reissued: bool,
    limits: EffectiveLimits | None,
    now: datetime,
) -> dict[str, Any]:
    """The tenant's status: conditions, the keys' public facts, effective limits."""
    conditions = existing.get("conditions") or []
    generation = tenant.metadata.generation
    policy = condition(
        conditions,
        POLICY_RESOLVED,
        policy_found,
        "PolicyFound" if policy_found else "PolicyNotFound",
        policy_message,
        generation,
        now,
    )
    issued = condition(
        conditions,
        KEYS_ISSUED,
        True,
        "KeysReissued" if keys_reissued else "KeysIssued",
        (
            "the key Secret was missing: every key was issued anew, the old ones no longer work"
            if keys_reissued
            else f"{len(keys.keys)} key(s) in Secret {key_secret_name(tenant.name)}"
        ),
        generation,
        now,
    )
    if not policy_found:
        ready = condition(
            conditions, READY, False, "PolicyNotFound", policy_message, generation, now
        )
    elif tenant.spec.suspended:
        ready = condition(
            conditions, READY, True, "Suspended", "suspended: its keys are refused", generation, now
        )
    else:
        ready = condition(conditions, READY, True, "Ready", "keys are served", generation, now)
    status = ApiTenantStatus(
        observed_generation=generation,
        tier=tenant.spec.policy_ref.name,
        secret_name=key_secret_name(tenant.name),
        keys=issued_keys(keys, tenant),
        key_count=len(keys.keys),
        effective=limits,
    ).to_manifest()
    status["conditions"] = [policy, issued, ready]
    if limits is None:
        status["effective"] = None
    return status


def invalid_tenant_status(
    existing: Mapping[str, Any], generation: int | None, message: str, now: datetime
) -> dict[str, Any]:
    """A spec the schema let through but the operator cannot serve: say why, keep the rest."""
    conditions = existing.get("conditions") or []
    return {
        "observedGeneration": generation,
        "conditions": [
            item for item in conditions if item.get("type") not in {READY, POLICY_RESOLVED}
        ]
        + [
            condition(conditions, POLICY_RESOLVED, False, "InvalidSpec", message, generation, now),
            condition(conditions, READY, False, "InvalidSpec", message, generation, now),
        ],
    }


def registry_value(entry: TenantEntry) -> str:
    """The shard's `data` value for one tenant: its entry's JSON, base64 as Secrets store it."""
    return b64(encode_entry(entry))


def registry_shard(name: str, namespace: str, data: Mapping[str, str]) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "type": "Opaque",
        "metadata": {
            "name": name,
            "namespace": namespace,
            "labels": {MANAGED_BY_LABEL: MANAGED_BY, REGISTRY_LABEL: "true"},
        },
        "data": dict(data),
    }


# --- policies --------------------------------------------------------------------------------


def policy_status(
    existing: Mapping[str, Any], generation: int | None, tenant_count: int, now: datetime
) -> dict[str, Any]:
    conditions = existing.get("conditions") or []
    status = RateLimitPolicyStatus(observed_generation=generation, tenant_count=tenant_count)
    return status.to_manifest() | {
        "conditions": [
            condition(
                conditions,
                READY,
                True,
                "Ready",
                f"{tenant_count} tenant(s) refer to this policy",
                generation,
                now,
            )
        ]
    }


# --- products --------------------------------------------------------------------------------


def product_value(product: ProductEntry) -> str:
    """The products Secret's `data` value for one product, base64 as Secrets store it."""
    return b64(encode_product(product))


def product_status(
    existing: Mapping[str, Any],
    generation: int | None,
    route_count: int,
    lost: Sequence[str],
    now: datetime,
) -> dict[str, Any]:
    """Ready while the gateway check serves every route of the product; a route another
    product declared first is named in the message."""
    conditions = existing.get("conditions") or []
    status = ApiProductStatus(observed_generation=generation, route_count=route_count)
    if lost:
        ready = condition(
            conditions, READY, False, "RouteConflict", "; ".join(lost), generation, now
        )
    else:
        message = f"the gateway check serves {route_count} route(s) of this product"
        ready = condition(conditions, READY, True, "Published", message, generation, now)
    return status.to_manifest() | {"conditions": [ready]}


def invalid_product_status(
    existing: Mapping[str, Any], generation: int | None, reason: str, message: str, now: datetime
) -> dict[str, Any]:
    conditions = existing.get("conditions") or []
    status = ApiProductStatus(observed_generation=generation)
    ready = condition(conditions, READY, False, reason, message, generation, now)
    return status.to_manifest() | {"conditions": [ready]}


# --- platform --------------------------------------------------------------------------------


def hpa_name(scaled: ScaledDeployment) -> str:
    return scaled.deployment


def desired_hpa(
    platform: ApiPlatform, owner: Mapping[str, Any], role: Role, reserved: float
) -> dict[str, Any]:
    """An autoscaling/v2 HPA of one Deployment: the floor from reserved capacity, CPU above it."""
    scaled = platform.spec.api if role == "api" else platform.spec.worker
    behavior = scaled.behavior.to_manifest() if scaled.behavior is not None else None
    manifest: dict[str, Any] = {
        "apiVersion": "autoscaling/v2",
        "kind": "HorizontalPodAutoscaler",
        "metadata": {
            "name": hpa_name(scaled),
            "namespace": platform.metadata.namespace,
            "labels": {MANAGED_BY_LABEL: MANAGED_BY, HPA_ROLE_LABEL: role},
        },
        "spec": {
            "scaleTargetRef": {
                "apiVersion": "apps/v1",
                "kind": "Deployment",
                "name": scaled.deployment,
            },
            "minReplicas": min_replicas_for(reserved, scaled),
            "maxReplicas": scaled.max_replicas,
            "metrics": [
                {
                    "type": "Resource",
                    "resource": {
                        "name": "cpu",
                        "target": {
                            "type": "Utilization",
                            "averageUtilization": scaled.target_cpu_utilization_percent,
                        },
                    },
                }
            ],
            "behavior": behavior or None,
        },
    }
    references = owner_reference(owner)
    if references is not None:
        manifest["metadata"]["ownerReferences"] = references
    return manifest


def scaling_status(scaled: ScaledDeployment, reserved: float) -> ScalingStatus:
    return ScalingStatus(
        reserved=reserved,
        capacity_per_replica=scaled.capacity_per_replica,
        min_replicas=min_replicas_for(reserved, scaled),
        max_replicas=scaled.max_replicas,
    )


def platform_status(
    platform: ApiPlatform,
    existing: Mapping[str, Any],
    *,
    active_tenants: int,
    reserved_rps: float,
    reserved_jobs: int,
    now: datetime,
) -> dict[str, Any]:
    conditions = existing.get("conditions") or []
    generation = platform.metadata.generation
    api = scaling_status(platform.spec.api, reserved_rps)
    worker = scaling_status(platform.spec.worker, reserved_jobs)
    message = (
        f"api floor {api.min_replicas} for {reserved_rps:g} req/s reserved; "
        f"worker floor {worker.min_replicas} for {reserved_jobs} job slots reserved"
    )
    return {
        "observedGeneration": generation,
        "activeTenants": active_tenants,
        "api": api.to_manifest(),
        "worker": worker.to_manifest(),
        "conditions": [
            condition(conditions, HPAS_APPLIED, True, "Applied", message, generation, now),
            condition(conditions, READY, True, "Ready", message, generation, now),
        ],
    }
