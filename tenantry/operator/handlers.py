"""What the operator reacts to: each Kopf handler says which objects wake it and calls the
reconciler. The logic lives in `reconcile`; the desired state in `desired`.

Kopf's indices keep the policies, the tenants (and which tenants use which policy) in memory,
and Kopf runs no handler before every index has listed its objects once, so a pass never
mistakes "not listed yet" for "gone".
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import Any, cast

import kopf
import structlog

from tenantry.contract.registry import PRODUCTS_SHARD, REGISTRY_LABEL
from tenantry.contract.resources import GROUP, VERSION
from tenantry.operator import desired
from tenantry.operator.kube import KubeClient, KubeError
from tenantry.operator.reconcile import Reconciler, policy_key, tenant_id_from
from tenantry.settings import Settings

log = structlog.get_logger("tenantry.operator")

TENANTS = (GROUP, VERSION, "apitenants")
POLICIES = (GROUP, VERSION, "ratelimitpolicies")
PLATFORMS = (GROUP, VERSION, "apiplatforms")
PRODUCTS = (GROUP, VERSION, "apiproducts")
SECRETS = ("v1", "secrets")
HPAS = ("autoscaling", "v2", "horizontalpodautoscalers")

FINALIZER = "tenantry.io/finalizer"

Index = Mapping[Any, Iterable[Any]]


def _one(index: Index, key: Any) -> Any:
    """The single value an index holds for a key (objects are unique by key), or None."""
    for value in index.get(key, ()):
        return value
    return None


def _retry_later(memo: Any, error: KubeError) -> kopf.TemporaryError:
    return kopf.TemporaryError(str(error), delay=memo.settings.operator.retry_delay_seconds)


# --- indices ---------------------------------------------------------------------------------


def tenants(body: kopf.Body, **_: Any) -> dict[str, str]:
    """Each tenant as its passes need it, kept as compact JSON (10,000 of them fit in a few
    MiB): metadata without kubectl's copy of the spec, the spec, the status conditions."""
    metadata = dict(body.get("metadata") or {})
    metadata.pop("managedFields", None)
    annotations = dict(metadata.get("annotations") or {})
    annotations.pop("kubectl.kubernetes.io/last-applied-configuration", None)
    metadata["annotations"] = annotations
    slim = {
        "apiVersion": body.get("apiVersion"),
        "kind": body.get("kind"),
        "metadata": metadata,
        "spec": dict(body.get("spec") or {}),
        "status": {"conditions": list((body.get("status") or {}).get("conditions") or [])},
    }
    return {tenant_id_from(body): json.dumps(slim, separators=(",", ":"), default=str)}


def _tenant(index: Index, tenant_id: str) -> dict[str, Any] | None:
    found = _one(index, tenant_id)
    return cast(dict[str, Any], json.loads(found)) if found is not None else None


def tenants_by_policy(body: kopf.Body, memo: Any, **_: Any) -> dict[tuple[str, str], str]:
    return {policy_key(body, memo.settings.platform_namespace): tenant_id_from(body)}


def policies(body: kopf.Body, namespace: str, name: str, **_: Any) -> dict[Any, dict[str, Any]]:
    return {(namespace, name): dict(body)}


def products(body: kopf.Body, namespace: str, name: str, memo: Any, **_: Any) -> dict[str, Any]:
    """The platform namespace's products, which the gateway check's table merges."""
    if namespace != memo.settings.platform_namespace:
        return {}
    return {name: dict(body)}


def registry_shards(
    body: kopf.Body, namespace: str, name: str, memo: Any, **_: Any
) -> dict[str, bool]:
    """The registry as the watch shows it; recorded here because Kopf lists every index
    before any handler runs, so the first tenant pass already knows what the registry holds."""
    if namespace != memo.settings.platform_namespace:
        return {}
    memo.reconciler.observe_shard(name, dict(body.get("data") or {}))
    return {name: True}


# --- lifecycle -------------------------------------------------------------------------------


def login(**kwargs: Any) -> kopf.ConnectionInfo | None:
    """In a pod, the service account; elsewhere the kubeconfig (as `tenantry.kubeconfig`)."""
    return kopf.login_with_service_account(**kwargs) or kopf.login_with_kubeconfig(**kwargs)


async def startup(settings: kopf.OperatorSettings, memo: Any, **_: Any) -> None:
    operator = memo.settings.operator
    client = await KubeClient.connect(operator.field_manager)
    memo.reconciler = Reconciler(
        client=client,
        platform_namespace=memo.settings.platform_namespace,
        shard_count=memo.settings.registry.shard_count,
    )
    log.info("operator_started", field_manager=operator.field_manager)


async def cleanup(memo: Any, **_: Any) -> None:
    await memo.reconciler.client.close()


# --- tenants ---------------------------------------------------------------------------------


async def reconcile_tenant(
    body: Mapping[str, Any], memo: Any, policies: Index, trigger: str
) -> None:
    key = policy_key(body, memo.settings.platform_namespace)
    try:
        await memo.reconciler.reconcile_tenant(body, _one(policies, key), trigger=trigger)
    except KubeError as error:
        raise _retry_later(memo, error) from error


async def tenant_changed(
    body: kopf.Body, reason: str, memo: Any, policies: Index, **_: Any
) -> None:
    await reconcile_tenant(body, memo, policies, trigger=str(reason))


async def tenant_deleted(body: kopf.Body, memo: Any, **_: Any) -> None:
    try:
        await memo.reconciler.delete_tenant(body)
    except KubeError as error:
        raise _retry_later(memo, error) from error


async def key_secret_changed(
    type: str | None,
    body: kopf.Body,
    namespace: str,
    memo: Any,
    tenants: Index,
    policies: Index,
    **_: Any,
) -> None:
    """Drift of a key Secret (edited or deleted by someone else) re-runs its tenant's pass."""
    if type is None:  # the initial listing: every tenant is resumed anyway
        return
    if type != "DELETED" and memo.reconciler.is_own_key_secret(body):
        return
    tenant_name = ((body.get("metadata") or {}).get("annotations") or {}).get(
        desired.TENANT_ANNOTATION
    )
    tenant = _tenant(tenants, f"{namespace}/{tenant_name}")
    if tenant is None:
        return
    log.info("key_secret_drift", tenant=f"{namespace}/{tenant_name}", watch_event=type)
    await reconcile_tenant(tenant, memo, policies, trigger="key-secret")


async def registry_shard_changed(
    type: str | None,
    body: kopf.Body,
    namespace: str,
    name: str,
    memo: Any,
    tenants: Index,
    products: Index,
    **_: Any,
) -> None:
    """Drift of a registry shard is repaired from what the tenants' passes last wrote, and
    of the products' Secret from the products."""
    if type is None or namespace != memo.settings.platform_namespace:
        return
    data = None if type == "DELETED" else dict(body.get("data") or {})
    if type == "DELETED":
        memo.reconciler.observe_shard(name, None)
    try:
        if name == PRODUCTS_SHARD:
            current = {key: _one(products, key) for key in list(products.keys())}
            await memo.reconciler.repair_products(data, current)
        else:
            await memo.reconciler.repair_shard(name, data, list(tenants.keys()))
    except KubeError as error:
        log.warning("registry_shard_repair_failed", shard=name, error=str(error))


# --- products --------------------------------------------------------------------------------


async def product_changed(body: kopf.Body, memo: Any, products: Index, **_: Any) -> None:
    """A product's routes go to the registry. One product's change can cause or settle
    another's route conflict, so every product's status is brought up to date."""
    await _reconcile_products(memo, products, changed=body)


async def product_deleted(
    body: kopf.Body, name: str, namespace: str, memo: Any, products: Index, **_: Any
) -> None:
    try:
        if namespace == memo.settings.platform_namespace:
            await memo.reconciler.remove_product(name)
    except KubeError as error:
        raise _retry_later(memo, error) from error
    await _reconcile_products(memo, products, gone=name)


async def _reconcile_products(
    memo: Any, products: Index, changed: kopf.Body | None = None, gone: str | None = None
) -> None:
    reconciler: Reconciler = memo.reconciler
    current = {key: _one(products, key) for key in list(products.keys()) if key != gone}
    if changed is not None:
        current[changed["metadata"]["name"]] = changed
    try:
        if changed is not None:
            await reconciler.reconcile_product(changed, current)
        for body in current.values():
            if body is not None and body is not changed:
                await reconciler.reconcile_product(body, current)
    except KubeError as error:
        raise _retry_later(memo, error) from error


# --- policies --------------------------------------------------------------------------------


async def policy_changed(
    type: str | None,
    body: kopf.Body,
    namespace: str,
    name: str,
    memo: Any,
    tenants: Index,
    tenants_by_policy: Index,
    policies: Index,
    **_: Any,
) -> None:
    """Every tenant of the policy is re-reconciled (found by index); status counts them."""
    tenant_ids = list(tenants_by_policy.get((namespace, name), ()))
    fingerprint = desired.digest(body.get("spec"))
    seen = memo.policy_fingerprints
    previous = seen.get((namespace, name))
    if type == "DELETED":
        seen.pop((namespace, name), None)
    else:
        seen[(namespace, name)] = fingerprint
    if previous is None and type != "DELETED":
        # First sight (startup or creation): only tenants waiting for this policy need a pass;
        # the others are resumed by their own handlers.
        tenant_ids = [t for t in tenant_ids if _waits_for_policy(_tenant(tenants, t) or {})]
    elif previous == fingerprint and type != "DELETED":
        tenant_ids = []  # an echo of our own status write, or the watch replaying the list
    log.info(
        "policy_changed", policy=f"{namespace}/{name}", watch_event=type, tenants=len(tenant_ids)
    )
    await _for_each(
        [_tenant(tenants, tenant_id) for tenant_id in tenant_ids],
        lambda tenant: reconcile_tenant(tenant, memo, policies, trigger="policy"),
        memo.settings.operator.reconcile_concurrency,
    )
    if type != "DELETED":
        count = len(list(tenants_by_policy.get((namespace, name), ())))
        try:
            await memo.reconciler.reconcile_policy(body, count)
        except KubeError as error:
            log.warning("policy_status_failed", policy=f"{namespace}/{name}", error=str(error))


def _waits_for_policy(tenant: Mapping[str, Any]) -> bool:
    """Reported PolicyNotFound, or being handled right now (Kopf's finalizer is on, no status
    yet) and so perhaps judged before the policy was listed. A brand-new tenant without the
    finalizer is left to its own create handler."""
    reason = desired.ready_reason(((tenant.get("status") or {}).get("conditions")) or [])
    if reason == "PolicyNotFound":
        return True
    finalizers = (tenant.get("metadata") or {}).get("finalizers") or []
    return reason is None and FINALIZER in finalizers


async def _for_each(
    bodies: Iterable[Mapping[str, Any] | None],
    action: Callable[[Mapping[str, Any]], Awaitable[None]],
    concurrency: int,
) -> None:
    """Run `action` on each body, a bounded number at a time; one failure does not stop the
    rest (each failed tenant is retried by the next resync)."""
    gate = asyncio.Semaphore(concurrency)

    async def guarded(body: Mapping[str, Any]) -> None:
        async with gate:
            try:
                await action(body)
            except kopf.TemporaryError as error:
                log.warning("tenant_pass_failed", tenant=tenant_id_from(body), error=str(error))

    await asyncio.gather(*(guarded(body) for body in bodies if body is not None))


# --- the platform ----------------------------------------------------------------------------


async def hpa_changed(type: str | None, body: kopf.Body, name: str, memo: Any, **_: Any) -> None:
    if type is None:
        return
    if memo.reconciler.hpa_drifted(None if type == "DELETED" else body, name):
        log.info("hpa_drift", hpa=name, watch_event=type)
        memo.reconciler.platform_dirty.set()


async def platform_loop(
    body: kopf.Body,
    memo: Any,
    stopped: kopf.DaemonStopped,
    tenants: Index,
    policies: Index,
    **_: Any,
) -> None:
    """The platform's HPAs follow the tenants' reservations, a short debounce after each
    change; every `resyncIntervalSeconds` every tenant is re-checked as a backstop for a
    missed watch event."""
    operator = memo.settings.operator
    reconciler: Reconciler = memo.reconciler
    reconciler.platform_dirty.set()
    last_resync = time.monotonic()
    while not stopped:
        try:
            await asyncio.wait_for(
                reconciler.platform_dirty.wait(), timeout=operator.resync_interval_seconds
            )
            await asyncio.sleep(operator.platform_debounce_seconds)
        except TimeoutError:
            pass
        if stopped:
            return
        reconciler.platform_dirty.clear()
        try:
            await reconciler.reconcile_platform(body)
        except KubeError as error:
            log.warning("platform_pass_failed", error=str(error))
            reconciler.platform_dirty.set()
            await stopped.wait(operator.retry_delay_seconds)
        if time.monotonic() - last_resync >= operator.resync_interval_seconds:
            last_resync = time.monotonic()
            await _for_each(
                [_tenant(tenants, tenant_id) for tenant_id in list(tenants.keys())],
                lambda tenant: reconcile_tenant(tenant, memo, policies, trigger="resync"),
                operator.reconcile_concurrency,
            )


# --- wiring ----------------------------------------------------------------------------------


def _handler(fn: Callable[..., Any]) -> Any:
    """Kopf's handler protocols list every keyword it may pass; ours name only what they use."""
    return fn


def build_registry() -> kopf.OperatorRegistry:
    """All handlers on a registry of their own, so several operators can run in one process
    (the tests restart one mid-reconcile)."""
    registry = kopf.OperatorRegistry()
    on = kopf.on
    kopf.index(*TENANTS, id="tenants", registry=registry)(_handler(tenants))
    kopf.index(*TENANTS, id="tenants_by_policy", registry=registry)(_handler(tenants_by_policy))
    kopf.index(*POLICIES, id="policies", registry=registry)(_handler(policies))
    kopf.index(*PRODUCTS, id="products", registry=registry)(_handler(products))
    kopf.index(
        *SECRETS, id="registry_shards", labels={REGISTRY_LABEL: kopf.PRESENT}, registry=registry
    )(_handler(registry_shards))
    on.login(registry=registry)(_handler(login))
    on.startup(registry=registry)(_handler(startup))
    on.cleanup(registry=registry)(_handler(cleanup))
    for cause, name in ((on.resume, "resume"), (on.create, "create"), (on.update, "update")):
        cause(*TENANTS, id=f"tenant-{name}", registry=registry)(_handler(tenant_changed))
    on.delete(*TENANTS, id="tenant-deleted", registry=registry)(_handler(tenant_deleted))
    for cause, name in ((on.resume, "resume"), (on.create, "create"), (on.update, "update")):
        cause(*PRODUCTS, id=f"product-{name}", registry=registry)(_handler(product_changed))
    on.delete(*PRODUCTS, id="product-deleted", registry=registry)(_handler(product_deleted))
    on.event(
        *SECRETS, id="key-secret", labels={desired.KEY_SECRET_LABEL: "true"}, registry=registry
    )(_handler(key_secret_changed))
    on.event(
        *SECRETS, id="registry-shard", labels={REGISTRY_LABEL: kopf.PRESENT}, registry=registry
    )(_handler(registry_shard_changed))
    on.event(*POLICIES, id="policy", registry=registry)(_handler(policy_changed))
    on.event(
        *HPAS,
        id="hpa",
        labels={desired.MANAGED_BY_LABEL: desired.MANAGED_BY},
        registry=registry,
    )(_handler(hpa_changed))
    kopf.daemon(*PLATFORMS, id="platform", cancellation_timeout=5.0, registry=registry)(
        _handler(platform_loop)
    )
    return registry


class DigestDiffBase(kopf.AnnotationsDiffBaseStorage):
    """Kopf remembers the last handled spec to detect changes; a digest of it is enough for a
    level-triggered reconcile and keeps a tenant with a hundred keys free of a copy of its
    whole spec in an annotation."""

    def build(self, *, body: kopf.Body, extra_fields: Any = None) -> Any:
        essence = super().build(body=body, extra_fields=extra_fields)
        return {"sha256": desired.digest(essence)}


def kopf_settings(settings: Settings) -> kopf.OperatorSettings:
    operator = settings.operator
    config = kopf.OperatorSettings()
    config.persistence.finalizer = FINALIZER
    config.persistence.diffbase_storage = DigestDiffBase(
        prefix="operator.tenantry.io", key="last-handled-digest"
    )
    config.persistence.progress_storage = kopf.AnnotationsProgressStorage(
        prefix="operator.tenantry.io"
    )
    # Our own Events say what happened; Kopf's per-handler "succeeded" notes would only add
    # a write per change. Its warnings and errors still become Events.
    config.posting.level = 30  # logging.WARNING
    config.peering.name = operator.peering_name
    config.peering.standalone = operator.standalone
    config.peering.priority = operator.peering_priority
    config.watching.reconnect_backoff = operator.watch_reconnect_seconds
    config.queueing.idle_timeout = operator.idle_timeout_seconds
    config.queueing.exit_timeout = operator.idle_timeout_seconds
    config.scanning.disabled = True
    config.persistence.consistency_timeout = operator.consistency_timeout_seconds
    return config


def memo_for(settings: Settings) -> kopf.Memo:
    return kopf.Memo(settings=settings, policy_fingerprints={})
