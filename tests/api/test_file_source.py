"""The file registry source: the operator's reconcile, with a local file for key Secrets."""

from __future__ import annotations

import asyncio
import stat
from pathlib import Path

import pytest

from tenantry.contract.keys import parse_key, verify_key
from tenantry.contract.registry import RegistryError
from tenantry.settings import Settings
from tenantry.sources import RegistryHolder, registry_source
from tenantry.sources.files import FileRegistrySource
from tests.api.conftest import MANIFESTS


def _source(manifests: Path, keys_file: Path) -> FileRegistrySource:
    return FileRegistrySource(
        [manifests], platform_namespace="tenantry-system", keys_file=keys_file
    )


def test_keys_are_issued_once_and_stable_across_restarts(tmp_path: Path) -> None:
    keys_file = tmp_path / "keys.json"
    first = _source(MANIFESTS, keys_file).reconcile()
    again = _source(MANIFESTS, keys_file).reconcile()  # a new process, same file
    plaintext = first.keys["team-t/alpha"].keys["main"].plaintext
    assert again.keys["team-t/alpha"].keys["main"].plaintext == plaintext
    assert again.registry.version == first.registry.version
    record = again.registry.lookup(parse_key(plaintext).key_id)
    assert record is not None
    assert verify_key(parse_key(plaintext), record.key.key_hash)
    assert plaintext not in repr(again.registry)
    assert stat.S_IMODE(keys_file.stat().st_mode) == 0o600


def test_the_registry_holds_hashes_scopes_and_limits(tmp_path: Path) -> None:
    registry = _source(MANIFESTS, tmp_path / "keys.json").reconcile().registry
    alpha = registry.tenants["team-t/alpha"]
    assert alpha.limits is not None
    assert alpha.limits.requests_per_minute == 60
    assert {key.name for key in alpha.keys} == {"main", "jobs-only", "old"}
    assert all(key.key_hash.startswith("sha256:") for key in alpha.keys)
    assert registry.tenants["team-t/frozen"].suspended


def test_a_bad_manifest_is_rejected_and_the_last_good_registry_keeps_serving(
    tmp_path: Path,
) -> None:
    manifests = tmp_path / "tenants.yaml"
    manifests.write_text(MANIFESTS.read_text())
    source = _source(manifests, tmp_path / "keys.json")
    holder = RegistryHolder()
    assert source.publish(holder)
    good = holder.registry
    manifests.write_text(
        MANIFESTS.read_text().replace("requestsPerMinute: 60\n", "requestsPerMinute: -5\n", 1)
    )
    assert not source.publish(holder)
    assert holder.rejected == 1
    assert holder.registry is good


def test_a_corrupt_key_file_is_named_in_the_error(tmp_path: Path) -> None:
    keys_file = tmp_path / "keys.json"
    keys_file.write_text("{not json")
    with pytest.raises(RegistryError, match=r"keys\.json: not valid JSON"):
        _source(MANIFESTS, keys_file).reconcile()


async def test_the_source_publishes_a_changed_manifest_without_a_restart(tmp_path: Path) -> None:
    manifests = tmp_path / "tenants.yaml"
    manifests.write_text(MANIFESTS.read_text())
    source = FileRegistrySource(
        [manifests],
        platform_namespace="tenantry-system",
        keys_file=tmp_path / "keys.json",
        poll_interval_seconds=0.05,
    )
    swapped = asyncio.Event()
    holder = RegistryHolder(on_swap=lambda _registry: swapped.set())
    task = asyncio.create_task(source.run(holder))
    try:
        async with asyncio.timeout(5):
            await swapped.wait()
            swapped.clear()
            manifests.write_text(
                MANIFESTS.read_text().replace("suspended: true", "suspended: false")
            )
            await swapped.wait()
    finally:
        task.cancel()
    assert not holder.registry.tenants["team-t/frozen"].suspended


@pytest.mark.parametrize(
    ("source", "class_name"),
    [("file", "FileRegistrySource"), ("kubernetes", "KubernetesRegistrySource")],
)
def test_the_configured_source_is_the_one_served(
    tmp_path: Path, source: str, class_name: str
) -> None:
    settings = Settings(
        registry={"source": source, "manifests": [MANIFESTS], "keys_file": tmp_path / "k.json"}
    )
    chosen = registry_source(settings)
    assert type(chosen).__name__ == class_name
