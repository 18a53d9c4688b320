"""The file registry source: manifests on disk → registry, for `tenantry dev` and tests.

It runs the same reconcile the operator runs, with a local file where the operator has
Kubernetes: for each `ApiTenant`, the key Secret state comes from `keys_file` (one entry per
tenant, in the Secret's own `stringData` + annotations form), `desired_key_state` issues,
rotates and revokes keys, the new state is written back (so keys are stable across
restarts), and `tenant_entry` builds the registry entry. The plaintext keys stay in
`keys_file` (mode 0600), the registry holds only hashes.

The source polls the manifests' modification times; a change is reconciled within
`poll_interval_seconds`. A manifest set that does not load is logged and counted as rejected,
and the last good registry keeps serving.
"""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import structlog

from tenantry.contract.issuance import (
    KeySecretState,
    desired_key_state,
    registry_keys,
)
from tenantry.contract.manifests import ManifestError, ManifestSet, load_manifests
from tenantry.contract.registry import (
    Registry,
    RegistryError,
    TenantEntry,
    product_entry,
    tenant_entry,
    tenant_id_of,
)
from tenantry.settings import Settings
from tenantry.sources import RegistryHolder

log = structlog.get_logger("tenantry.sources.files")


@dataclass(frozen=True)
class Reconciled:
    """One pass: the registry to serve and each tenant's key state (plaintext included)."""

    registry: Registry
    keys: dict[str, KeySecretState]
    manifests: ManifestSet


class FileRegistrySource:
    def __init__(
        self,
        paths: Sequence[Path],
        *,
        platform_namespace: str,
        keys_file: Path,
        poll_interval_seconds: float = 2.0,
    ) -> None:
        self.paths = list(paths)
        self.platform_namespace = platform_namespace
        self.keys_file = keys_file
        self.poll_interval_seconds = poll_interval_seconds

    def reconcile(self, now: datetime | None = None) -> Reconciled:
        """Load the manifests, issue what is missing, persist key state, build the registry.

        Raises `ManifestError` or `RegistryError` naming what is wrong; nothing is written
        then, so a bad edit cannot revoke keys.
        """
        now = now or datetime.now(UTC)
        found = load_manifests(self.paths, self.platform_namespace)
        stored = self._read_keys(now)
        states: dict[str, KeySecretState] = {}
        entries: list[TenantEntry] = []
        for (namespace, name), tenant in sorted(found.tenants.items()):
            tenant_id = tenant_id_of(namespace, name)
            if tenant.metadata.namespace is None:
                tenant = tenant.model_copy(
                    update={"metadata": tenant.metadata.model_copy(update={"namespace": namespace})}
                )
            state = desired_key_state(tenant, stored.get(tenant_id), now)
            states[tenant_id] = state
            policy = found.policy_for(tenant, self.platform_namespace)
            entries.append(
                tenant_entry(tenant, policy, registry_keys(tenant, state), state.signing_secret)
            )
        registry = Registry.build(
            entries, (product_entry(product) for product in found.products.values())
        )
        self._write_keys(states)
        return Reconciled(registry, states, found)

    async def run(self, holder: RegistryHolder) -> None:
        fingerprint: tuple[Any, ...] | None = None
        while True:
            current = self._fingerprint()
            if current != fingerprint or not holder.loaded:
                fingerprint = current
                self.publish(holder)
            else:
                holder.publish(holder.registry)  # confirms the snapshot is still current
            await asyncio.sleep(self.poll_interval_seconds)

    def publish(self, holder: RegistryHolder) -> bool:
        """One reconcile into `holder`; False (and the last good registry kept) on error."""
        try:
            reconciled = self.reconcile()
        except (ManifestError, RegistryError, OSError) as error:
            holder.reject()
            problems = error.problems if isinstance(error, ManifestError) else [str(error)]
            log.error("registry_rejected", source="files", problems=problems)
            return False
        holder.publish(reconciled.registry)
        return True

    # --- the key file ------------------------------------------------------------------

    def _read_keys(self, now: datetime) -> dict[str, KeySecretState]:
        try:
            raw = json.loads(self.keys_file.read_text())
        except FileNotFoundError:
            return {}
        except json.JSONDecodeError as error:
            raise RegistryError(
                f"{self.keys_file}: not valid JSON ({error}); fix or delete it to re-issue keys"
            ) from error
        if not isinstance(raw, dict):
            raise RegistryError(f"{self.keys_file}: expected an object of tenants")
        states = {}
        for tenant_id, secret in raw.items():
            if not isinstance(secret, dict):
                raise RegistryError(f"{self.keys_file}: {tenant_id}: expected an object")
            states[tenant_id] = KeySecretState.from_secret(
                dict(secret.get("stringData", {})), dict(secret.get("annotations", {})), now
            )
        return states

    def _write_keys(self, states: dict[str, KeySecretState]) -> None:
        document = {}
        for tenant_id, state in sorted(states.items()):
            data, annotations = state.to_secret()
            document[tenant_id] = {"stringData": data, "annotations": annotations}
        self.keys_file.parent.mkdir(parents=True, exist_ok=True)
        temporary = self.keys_file.with_suffix(".tmp")
        descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(descriptor, "w") as handle:
            json.dump(document, handle, indent=2, sort_keys=True)
        temporary.replace(self.keys_file)

    def _fingerprint(self) -> tuple[Any, ...]:
        return tuple(_stat(path) for path in _files(self.paths))


def source_from_settings(settings: Settings) -> FileRegistrySource:
    return FileRegistrySource(
        settings.registry.manifests,
        platform_namespace=settings.platform_namespace,
        keys_file=settings.registry.keys_file,
        poll_interval_seconds=settings.registry.poll_interval_seconds,
    )


def _files(paths: Iterable[Path]) -> list[Path]:
    found: list[Path] = []
    for path in paths:
        if path.is_dir():
            found += sorted(p for p in path.rglob("*") if p.suffix in {".yaml", ".yml"})
        else:
            found.append(path)
    return found


def _stat(path: Path) -> tuple[str, int, int]:
    try:
        status = path.stat()
    except FileNotFoundError:
        return (str(path), -1, -1)
    return (str(path), status.st_mtime_ns, status.st_size)
