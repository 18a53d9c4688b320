"""Observe → desired → apply, for tenants, policies and the platform.

Each pass reads what is (the object Kopf hands over, the key Secret, the registry shard as last
seen on the watch, the HPAs), asks `desired` what should be, and writes only the difference as
JSON merge patches through `kube`. A pass that finds nothing to change makes no write call.

One `Reconciler` lives as long as the operator process. It remembers what it last wrote (the
registry entries, the HPAs, a fingerprint of each key Secret) so that the watch events caused
by its own writes are recognised and cost nothing, while anybody else's edit is drift and is
put back.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, cast

import kopf
import structlog
from pydantic import ValidationError

from tenantry.contract.issuance import (
    STATE_ANNOTATION,
    KeySecretState,
    desired_key_state,
    key_secret_name,
    registry_keys,
)
from tenantry.contract.manifests import describe_validation_error
from tenantry.contract.policy import effective_limits, reserved_capacity, reserved_job_slots
from tenantry.contract.registry import (
    PRODUCTS_SHARD,
    ProductEntry,
    ProductRoutes,
    TenantEntry,
    product_entry,
    shard_index,
    shard_name,
    tenant_data_key,
    tenant_entry,
    tenant_id_of,
)
from tenantry.contract.resources import (
    ApiPlatform,
    ApiProduct,
    ApiTenant,
    ApiTenantSpec,
    EffectiveLimits,
    FailureMode,
    RateLimitPolicy,
)
from tenantry.operator import desired, metrics
from tenantry.operator.kube import ConflictError, KubeClient, core_path, custom_path, hpa_path

log = structlog.get_logger("tenantry.operator")

Body = Mapping[str, Any]


def utcnow() -> datetime:
    return datetime.now(UTC)


def tenant_id_from(body: Body) -> str:
    metadata = body.get("metadata") or {}
    return tenant_id_of(str(metadata.get("namespace")), str(metadata.get("name")))


def policy_key(tenant: Body, platform_namespace: str) -> tuple[str, str]:
    """`(namespace, name)` of the policy a tenant refers to, even when its spec is otherwise bad."""
    ref = ((tenant.get("spec") or {}).get("policyRef")) or {}
    return (str(ref.get("namespace") or platform_namespace), str(ref.get("name")))


def _resource_fields(body: Body) -> dict[str, Any]:
    """What the contract models read of an object; the server's bookkeeping stays out."""
    metadata = body.get("metadata") or {}
    return {
        "apiVersion": body.get("apiVersion"),
        "kind": body.get("kind"),
        "metadata": {
            key: metadata[key]
            for key in ("name", "namespace", "labels", "annotations", "generation", "uid")
            if metadata.get(key) is not None
        },
        "spec": body.get("spec"),
    }


def _without_type(manifest: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in manifest.items() if k not in {"apiVersion", "kind"}}


def _key_secret_fingerprint(secret: Body) -> str:
    annotations = (secret.get("metadata") or {}).get("annotations") or {}
    return desired.digest([secret.get("data") or {}, annotations.get(STATE_ANNOTATION)])


@dataclass
class TenantOutcome:
    """What a tenant pass found, for the handler's logs and the tests."""

    ready: bool
    reason: str
    writes: int = 0


@dataclass
class Reconciler:
    """The operator's reconcile logic and the little it must remember between passes."""

    client: KubeClient
    platform_namespace: str
    shard_count: int
    clock: Callable[[], datetime] = utcnow
    # Registry shards as last seen (watch) or written: shard name → data key → base64 entry.
    shards: dict[str, dict[str, str]] = field(default_factory=dict)
    # Every tenant's registry entry as last written (the shard's base64 value: compact, and
    # what the shard holds), its limits, and what it reserves (for the HPAs). Limits are
    # interned: thousands of tenants share a handful of tiers.
    entries: dict[str, str] = field(default_factory=dict)
    limits: dict[str, EffectiveLimits | None] = field(default_factory=dict)
    _interned: dict[str, EffectiveLimits] = field(default_factory=dict)
    reservations: dict[str, tuple[ApiTenantSpec, EffectiveLimits]] = field(default_factory=dict)
    # Fingerprints of the key Secrets as last written, to tell our own echo from drift.
    key_secrets: dict[tuple[str, str], str] = field(default_factory=dict)
    # Status stanzas as last written, by object: fresher than the body of an event that
    # crossed our own write, and what keeps a condition's lastTransitionTime put.
    statuses: dict[str, str] = field(default_factory=dict)  # compact JSON: 10,000 of them
    # The HPAs as last written, by name, to tell drift from our own echo.
    hpas: dict[str, dict[str, Any]] = field(default_factory=dict)
    platform_dirty: asyncio.Event = field(default_factory=asyncio.Event)
    shard_batch_seconds: float = 0.05
    _pending: dict[str, dict[str, str | None]] = field(default_factory=dict)
    _batches: dict[str, asyncio.Future[None]] = field(default_factory=dict)
    _locks: dict[str, asyncio.Lock] = field(default_factory=dict)

    def _lock(self, key: str) -> asyncio.Lock:
        return self._locks.setdefault(key, asyncio.Lock())

    # --- tenants -----------------------------------------------------------------------------

    async def reconcile_tenant(
        self, body: Body, policy_body: Body | None, *, trigger: str = "change"
    ) -> TenantOutcome:
        """Bring a tenant's key Secret, registry entry and status to what its spec asks."""
        tenant_id = tenant_id_from(body)
        if (body.get("metadata") or {}).get("deletionTimestamp"):
            return TenantOutcome(ready=False, reason="Deleting")
        async with self._lock(tenant_id):
            started = time.perf_counter()
            try:
                outcome = await self._reconcile_tenant(tenant_id, body, policy_body, trigger)
            except Exception:
                metrics.RECONCILES.labels(kind="ApiTenant", outcome="error").inc()
                raise
            finally:
                metrics.RECONCILE_SECONDS.labels(kind="ApiTenant").observe(
                    time.perf_counter() - started
                )
            result = "changed" if outcome.writes else "unchanged"
            if outcome.reason == "InvalidSpec":
                result = "invalid"
            metrics.RECONCILES.labels(kind="ApiTenant", outcome=result).inc()
            metrics.MANAGED.labels(kind="ApiTenant").set(len(self.entries))
            return outcome

    async def _reconcile_tenant(
        self, tenant_id: str, body: Body, policy_body: Body | None, trigger: str
    ) -> TenantOutcome:
        now = self.clock()
        status = self.status_of(body)
        generation = (body.get("metadata") or {}).get("generation")
        try:
            tenant = ApiTenant.model_validate(_resource_fields(body))
        except ValidationError as error:
            return await self._invalid_tenant(body, "; ".join(describe_validation_error(error)))
        policy, policy_message = self._policy(tenant, policy_body)
        try:
            limits = effective_limits(policy.spec, tenant.spec.overrides) if policy else None
        except ValidationError as error:
            problems = describe_validation_error(error)
            return await self._invalid_tenant(
                body, "; ".join(f"spec.overrides.{problem}" for problem in problems)
            )

        writes = 0
        namespace = str(tenant.metadata.namespace)
        secret_path = core_path("secrets", namespace, key_secret_name(tenant.name))
        secret = await self.client.get(secret_path)
        existing = (
            KeySecretState.from_secret(
                desired.secret_strings(secret),
                (secret.get("metadata") or {}).get("annotations") or {},
                now,
            )
            if secret is not None
            else None
        )
        state = desired_key_state(tenant, existing, now)
        reissued = secret is None and bool(status.get("keys"))
        manifest = desired.key_secret(tenant, body, state, (secret or {}).get("data") or {})
        if secret is None:
            manifest["data"] = {k: v for k, v in manifest["data"].items() if v is not None}
            written = await self._create(core_path("secrets", namespace), manifest, "Secret")
            writes += 1
        else:
            patch = desired.merge_patch(secret, _without_type(manifest))
            written = secret
            if patch:
                written = await self.client.patch(secret_path, patch) or secret
                metrics.WRITES.labels(object="Secret").inc()
                writes += 1
        self.key_secrets[(namespace, key_secret_name(tenant.name))] = _key_secret_fingerprint(
            written
        )
        changes = _key_changes(existing, state)
        # The condition keeps saying the keys were re-issued until the keys change again.
        said_reissued = any(
            item.get("type") == desired.KEYS_ISSUED and item.get("reason") == "KeysReissued"
            for item in status.get("conditions") or []
        )
        shown_reissued = reissued or (said_reissued and not changes)

        entry = tenant_entry(tenant, policy, registry_keys(tenant, state), state.signing_secret)
        if limits is None:
            entry = entry.model_copy(update={"limits": self._limits_kept(tenant_id)})
        writes += await self.put_entry(entry)
        self._reserve(tenant_id, tenant.spec, entry.limits)

        want = desired.tenant_status(
            tenant,
            status,
            policy_found=policy is not None,
            policy_message=policy_message,
            keys=state,
            keys_reissued=shown_reissued,
            limits=limits,
            now=now,
        )
        writes += await self._patch_status(body, "apitenants", want)

        if reissued:
            _event(
                body,
                type="Warning",
                reason="KeysReissued",
                message="the key Secret was missing: every key was issued anew",
            )
        elif changes:
            _event(body, type="Normal", reason="KeysIssued", message="; ".join(changes))
        if policy is None:
            _event(body, type="Warning", reason="PolicyNotFound", message=policy_message)
        log.info(
            "tenant_reconciled",
            tenant=tenant_id,
            trigger=trigger,
            generation=generation,
            writes=writes,
            keys=len(state.keys),
            policy_found=policy is not None,
        )
        reason = desired.ready_reason(want["conditions"]) or "Unknown"
        return TenantOutcome(ready=policy is not None, reason=reason, writes=writes)

    def _policy(
        self, tenant: ApiTenant, policy_body: Body | None
    ) -> tuple[RateLimitPolicy | None, str]:
        ref = tenant.spec.policy_ref
        where = f"{ref.namespace or self.platform_namespace}/{ref.name}"
        if policy_body is None:
            return None, f"RateLimitPolicy {where} not found"
        try:
            return RateLimitPolicy.model_validate(_resource_fields(policy_body)), f"{where}"
        except ValidationError as error:
            problems = "; ".join(describe_validation_error(error))
            return None, f"RateLimitPolicy {where} is invalid: {problems}"

    def _limits_kept(self, tenant_id: str) -> EffectiveLimits | None:
        """Limits of a tenant whose policy is gone: the last ones it was served with, unless
        that policy was `failureMode: closed` (then its keys are refused, as Redis being down
        would refuse them). A tier deleted by mistake so does not take its tenants offline."""
        previous = self.limits.get(tenant_id) or self._limits_in_registry(tenant_id)
        if previous is None or previous.failure_mode is FailureMode.CLOSED:
            return None
        return previous

    def _limits_in_registry(self, tenant_id: str) -> EffectiveLimits | None:
        """The limits the registry serves for a tenant (after a restart, the only memory)."""
        value = self.shards.get(self.shard_of(tenant_id), {}).get(tenant_data_key(tenant_id))
        if value is None:
            return None
        try:
            text = desired.secret_strings({"data": {"entry": value}})["entry"]
            return TenantEntry.model_validate_json(text).limits
        except ValueError:
            return None  # a damaged entry: nothing to keep

    async def _invalid_tenant(self, body: Body, message: str) -> TenantOutcome:
        """No retry: a spec only a new edit can fix is reported once and left alone."""
        want = desired.invalid_tenant_status(
            self.status_of(body),
            (body.get("metadata") or {}).get("generation"),
            message,
            self.clock(),
        )
        writes = await self._patch_status(body, "apitenants", want)
        if writes:
            _event(body, type="Warning", reason="InvalidSpec", message=message)
        log.warning("tenant_invalid", tenant=tenant_id_from(body), problem=message)
        return TenantOutcome(ready=False, reason="InvalidSpec", writes=writes)

    def _reserve(self, tenant_id: str, spec: ApiTenantSpec, limits: EffectiveLimits | None) -> None:
        before = self.reservations.get(tenant_id)
        if limits is None:
            self.reservations.pop(tenant_id, None)
        else:
            self.reservations[tenant_id] = (spec, self._intern(limits) or limits)
        after = self.reservations.get(tenant_id)
        if _reservation(before) != _reservation(after):
            self.platform_dirty.set()

    async def delete_tenant(self, body: Body) -> None:
        """Take the tenant out of the registry and remove its key Secret."""
        tenant_id = tenant_id_from(body)
        metadata = body.get("metadata") or {}
        namespace, name = str(metadata.get("namespace")), str(metadata.get("name"))
        async with self._lock(tenant_id):
            await self.remove_entry(tenant_id)
            self.entries.pop(tenant_id, None)
            self.limits.pop(tenant_id, None)
            if self.reservations.pop(tenant_id, None) is not None:
                self.platform_dirty.set()
            self.key_secrets.pop((namespace, key_secret_name(name)), None)
            if await self.client.delete(core_path("secrets", namespace, key_secret_name(name))):
                metrics.WRITES.labels(object="Secret").inc()
        self._locks.pop(tenant_id, None)
        self.statuses.pop(_object_key(body), None)
        metrics.MANAGED.labels(kind="ApiTenant").set(len(self.entries))
        log.info("tenant_deleted", tenant=tenant_id)

    def is_own_key_secret(self, secret: Body) -> bool:
        metadata = secret.get("metadata") or {}
        key = (str(metadata.get("namespace")), str(metadata.get("name")))
        return self.key_secrets.get(key) == _key_secret_fingerprint(secret)

    # --- the registry ------------------------------------------------------------------------

    def shard_of(self, tenant_id: str) -> str:
        return shard_name(shard_index(tenant_id, self.shard_count))

    def observe_shard(self, name: str, data: Mapping[str, str] | None) -> None:
        """Record a shard as the watch shows it (None: it was deleted)."""
        if data is None:
            self.shards.pop(name, None)
        else:
            self.shards[name] = dict(data)

    async def put_entry(self, entry: TenantEntry) -> int:
        """Write a tenant's entry into its shard unless it is there already; the write count."""
        shard = self.shard_of(entry.tenant_id)
        value = desired.registry_value(entry)
        self.entries[entry.tenant_id] = value
        self.limits[entry.tenant_id] = self._intern(entry.limits)
        if self.shards.get(shard, {}).get(entry.data_key) == value:
            return 0
        await self._write_shard(shard, {entry.data_key: value})
        return 1

    def _intern(self, limits: EffectiveLimits | None) -> EffectiveLimits | None:
        if limits is None:
            return None
        return self._interned.setdefault(limits.model_dump_json(), limits)

    async def remove_entry(self, tenant_id: str) -> None:
        shard = self.shard_of(tenant_id)
        data_key = tenant_data_key(tenant_id)
        if shard in self.shards and data_key not in self.shards[shard]:
            return
        await self._write_shard(shard, {data_key: None})

    async def _write_shard(self, shard: str, changes: dict[str, str | None]) -> None:
        """Group commit: passes touching one shard within `shard_batch_seconds` share one
        merge patch. The first becomes the leader and writes everybody's changes; the others
        wait for that write and see its outcome (an error makes each of them retry)."""
        self._pending.setdefault(shard, {}).update(changes)
        batch = self._batches.get(shard)
        if batch is not None:
            await asyncio.shield(batch)
            return
        batch = asyncio.get_running_loop().create_future()
        self._batches[shard] = batch
        try:
            await asyncio.sleep(self.shard_batch_seconds)
            del self._batches[shard]
            await self._apply_shard(shard, self._pending.pop(shard, {}))
        except BaseException as error:
            self._batches.pop(shard, None)
            batch.set_exception(error)
            batch.exception()  # the leader re-raises; followers read it from the future
            raise
        batch.set_result(None)

    async def _apply_shard(self, shard: str, changes: dict[str, str | None]) -> None:
        path = core_path("secrets", self.platform_namespace, shard)
        written = None
        if shard in self.shards:
            written = await self.client.patch(path, {"data": changes})
        if written is None:
            data = {k: v for k, v in changes.items() if v is not None}
            manifest = desired.registry_shard(shard, self.platform_namespace, data)
            try:
                await self.client.create(core_path("secrets", self.platform_namespace), manifest)
            except ConflictError:
                await self.client.patch(path, {"data": changes})
            self.shards.setdefault(shard, {})
        metrics.WRITES.labels(object="RegistryShard").inc()
        cached = self.shards[shard]
        for key, value in changes.items():
            if value is None:
                cached.pop(key, None)
            else:
                cached[key] = value

    async def repair_shard(
        self, name: str, data: Mapping[str, str] | None, known_tenants: Iterable[str]
    ) -> int:
        """Put a shard back after somebody else edited or deleted it; the write count.

        Entries of tenants this process has reconciled are restored; entries of tenants that no
        longer exist are removed; entries of tenants not yet reconciled are left for their own
        pass to judge.
        """
        if name not in {shard_name(i) for i in range(self.shard_count)}:
            return 0
        self.observe_shard(name, data)
        wanted = {
            tenant_data_key(tenant_id): value
            for tenant_id, value in self.entries.items()
            if self.shard_of(tenant_id) == name
        }
        have = data or {}
        changes: dict[str, str | None] = {k: v for k, v in wanted.items() if have.get(k) != v}
        known = {tenant_data_key(tenant_id) for tenant_id in known_tenants}
        changes |= {k: None for k in have if k not in wanted and k not in known}
        if not changes and data is not None:
            return 0
        await self._write_shard(name, changes)
        log.info("registry_shard_repaired", shard=name, entries=len(changes))
        return 1

    # --- products ----------------------------------------------------------------------------

    async def reconcile_product(self, body: Body, products: Mapping[str, Body | None]) -> int:
        """Publish a product's routes to the registry's products Secret and report what the
        gateway check serves of them; `products` are every product of the platform
        namespace as the index shows them (a route two declare goes to the first by name).
        The write count."""
        metadata = body.get("metadata") or {}
        name, generation = str(metadata.get("name")), metadata.get("generation")
        if metadata.get("namespace") != self.platform_namespace:
            message = (
                f"products live in the platform namespace {self.platform_namespace!r}; "
                "this one is not served"
            )
            want = desired.invalid_product_status(
                self.status_of(body), generation, "WrongNamespace", message, self.clock()
            )
            return await self._patch_status(body, "apiproducts", want)
        try:
            product = ApiProduct.model_validate(_resource_fields(body))
        except ValidationError as error:
            writes = await self.remove_product(name)
            message = "; ".join(describe_validation_error(error))
            want = desired.invalid_product_status(
                self.status_of(body), generation, "InvalidSpec", message, self.clock()
            )
            return writes + await self._patch_status(body, "apiproducts", want)
        entry = product_entry(product)
        writes = 0
        value = desired.product_value(entry)
        if self.shards.get(PRODUCTS_SHARD, {}).get(name) != value:
            await self._write_shard(PRODUCTS_SHARD, {name: value})
            writes += 1
        merged = ProductRoutes.merge((_published(products.values()) | {name: entry}).values())
        lost = merged.conflicts.get(name, ())
        want = desired.product_status(
            self.status_of(body), generation, len(entry.routes), lost, self.clock()
        )
        return writes + await self._patch_status(body, "apiproducts", want)

    async def repair_products(
        self, data: Mapping[str, str] | None, products: Mapping[str, Body | None]
    ) -> int:
        """Put the products' Secret back after somebody else edited or deleted it: every
        valid product's entry, nothing else. The write count."""
        self.observe_shard(PRODUCTS_SHARD, data)
        wanted = {
            name: desired.product_value(entry)
            for name, entry in _published(products.values()).items()
        }
        have = data or {}
        changes: dict[str, str | None] = {k: v for k, v in wanted.items() if have.get(k) != v}
        changes |= {k: None for k in have if k not in wanted}
        if not changes:
            return 0
        await self._write_shard(PRODUCTS_SHARD, changes)
        log.info("registry_products_repaired", products=len(changes))
        return 1

    async def remove_product(self, name: str) -> int:
        if name not in self.shards.get(PRODUCTS_SHARD, {}):
            return 0
        await self._write_shard(PRODUCTS_SHARD, {name: None})
        log.info("product_removed", product=name)
        return 1

    # --- policies ----------------------------------------------------------------------------

    async def reconcile_policy(self, body: Body, tenant_count: int) -> int:
        want = desired.policy_status(
            self.status_of(body),
            (body.get("metadata") or {}).get("generation"),
            tenant_count,
            self.clock(),
        )
        return await self._patch_status(body, "ratelimitpolicies", want)

    # --- the platform ------------------------------------------------------------------------

    async def reconcile_platform(self, body: Body) -> int:
        """HPAs of the API and the worker from the capacity active tenants reserve."""
        started = time.perf_counter()
        try:
            platform = ApiPlatform.model_validate(_resource_fields(body))
        except ValidationError as error:
            message = "; ".join(describe_validation_error(error))
            want = desired.invalid_tenant_status(
                self.status_of(body),
                (body.get("metadata") or {}).get("generation"),
                message,
                self.clock(),
            )
            metrics.RECONCILES.labels(kind="ApiPlatform", outcome="invalid").inc()
            return await self._patch_status(body, "apiplatforms", want)
        active = list(self.reservations.values())
        reserved_rps = reserved_capacity(active)
        reserved_jobs = reserved_job_slots(active)
        writes = 0
        namespace = str(platform.metadata.namespace)
        for role, reserved in (("api", reserved_rps), ("worker", float(reserved_jobs))):
            want = desired.desired_hpa(platform, body, role, reserved)  # type: ignore[arg-type]
            name = want["metadata"]["name"]
            self.hpas[name] = want
            have = await self.client.get(hpa_path(namespace, name))
            if have is None:
                want["spec"] = {k: v for k, v in want["spec"].items() if v is not None}
                await self._create(hpa_path(namespace), want, "HorizontalPodAutoscaler")
                writes += 1
            elif patch := desired.merge_patch(have, _without_type(want)):
                await self.client.patch(hpa_path(namespace, name), patch)
                metrics.WRITES.labels(object="HorizontalPodAutoscaler").inc()
                writes += 1
        status = desired.platform_status(
            platform,
            self.status_of(body),
            active_tenants=sum(1 for spec, _ in active if not spec.suspended),
            reserved_rps=reserved_rps,
            reserved_jobs=reserved_jobs,
            now=self.clock(),
        )
        writes += await self._patch_status(body, "apiplatforms", status)
        outcome = "changed" if writes else "unchanged"
        metrics.RECONCILES.labels(kind="ApiPlatform", outcome=outcome).inc()
        metrics.RECONCILE_SECONDS.labels(kind="ApiPlatform").observe(time.perf_counter() - started)
        if writes:
            log.info("platform_reconciled", reserved_rps=reserved_rps, reserved_jobs=reserved_jobs)
        return writes

    def hpa_drifted(self, hpa: Body | None, name: str) -> bool:
        want = self.hpas.get(name)
        if want is None:
            return False
        return hpa is None or bool(desired.merge_patch(hpa, _without_type(want)))

    # --- writing -----------------------------------------------------------------------------

    async def _create(self, path: str, manifest: dict[str, Any], kind: str) -> dict[str, Any]:
        """Create; when it already exists (a lost race or a stale read), patch it instead."""
        metrics.WRITES.labels(object=kind).inc()
        try:
            return await self.client.create(path, manifest)
        except ConflictError:
            name = manifest["metadata"]["name"]
            patched = await self.client.patch(f"{path}/{name}", _without_type(manifest))
            return patched or manifest

    def status_of(self, body: Body) -> Mapping[str, Any]:
        """The object's status as we last wrote it, else as the event shows it."""
        written = self.statuses.get(_object_key(body))
        if written is not None:
            return cast(Mapping[str, Any], json.loads(written))
        return body.get("status") or {}

    async def _patch_status(self, body: Body, plural: str, want: Mapping[str, Any]) -> int:
        key = _object_key(body)
        patch = desired.merge_patch(self.status_of(body), want)
        if not patch:
            return 0
        self.statuses[key] = json.dumps(want, separators=(",", ":"))
        metadata = body.get("metadata") or {}
        path = custom_path(
            plural, str(metadata.get("namespace")), str(metadata.get("name")), status=True
        )
        await self.client.patch(path, {"status": patch})
        metrics.WRITES.labels(object=f"{plural}/status").inc()
        return 1


def _published(products: Iterable[Body | None]) -> dict[str, ProductEntry]:
    """The entries of the valid products among `products`, by name (an invalid one is
    reported by its own pass, and not published)."""
    entries: dict[str, ProductEntry] = {}
    for body in products:
        if body is None:
            continue
        try:
            entry = product_entry(ApiProduct.model_validate(_resource_fields(body)))
        except ValidationError:
            continue
        entries[entry.name] = entry
    return entries


def _object_key(body: Body) -> str:
    metadata = body.get("metadata") or {}
    return f"{body.get('kind')}/{metadata.get('namespace')}/{metadata.get('name')}"


def _event(body: Body, *, type: str, reason: str, message: str) -> None:
    """An Event on the object, posted by Kopf's queue (batched, retried, never blocking)."""
    kopf.event(cast(kopf.Body, body), type=type, reason=reason, message=message)


def _reservation(item: tuple[ApiTenantSpec, EffectiveLimits] | None) -> tuple[Any, ...] | None:
    if item is None:
        return None
    spec, limits = item
    return (spec.suspended, limits.reserved_requests_per_second, limits.max_concurrent_jobs)


def _key_changes(before: KeySecretState | None, after: KeySecretState) -> list[str]:
    """Human-readable key changes for an Event; names and ids only, never key material."""
    old = before.keys if before is not None else {}
    changes = []
    for name, record in sorted(after.keys.items()):
        if name not in old:
            changes.append(f"issued key {name} ({record.key_id})")
        elif old[name].plaintext != record.plaintext:
            changes.append(f"rotated key {name} ({old[name].key_id} → {record.key_id})")
    changes += [f"revoked key {name}" for name in sorted(set(old) - set(after.keys))]
    return changes
