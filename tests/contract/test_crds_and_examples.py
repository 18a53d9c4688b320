"""The committed CRDs are what the models generate; the examples pass both checks."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

from tenantry.cli import app
from tenantry.contract.crds import render_crds
from tenantry.contract.manifests import load_manifests, parse_manifest
from tests.harness.crd_schema import crd_errors

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = sorted((REPO / "examples").rglob("*.yaml"))


def test_committed_crds_equal_what_the_models_generate() -> None:
    rendered = render_crds()
    committed = {path.name: path.read_text() for path in (REPO / "crds").glob("*.yaml")}
    assert committed == rendered, "crds/ is stale: run `make crds` and commit the result"


def test_crds_check_command_reports_a_stale_folder(tmp_path: Path) -> None:
    runner = CliRunner()
    assert runner.invoke(app, ["crds", "--out", str(tmp_path)]).exit_code == 0
    assert runner.invoke(app, ["crds", "--check", "--out", str(tmp_path)]).exit_code == 0
    (tmp_path / "tenantry.io_apitenants.yaml").write_text("stale")
    result = runner.invoke(app, ["crds", "--check", "--out", str(tmp_path)])
    assert result.exit_code == 1
    assert "tenantry.io_apitenants.yaml" in result.output


def test_crds_are_structural_with_status_printer_columns_and_short_names() -> None:
    for name, text in render_crds().items():
        crd = yaml.safe_load(text)
        if not name.startswith("tenantry.io_"):
            continue  # Kopf's peering CRDs, checked below
        version = crd["spec"]["versions"][0]
        assert version["subresources"] == {"status": {}}
        assert {c["name"] for c in version["additionalPrinterColumns"]} >= {"Ready", "Age"}
        assert crd["spec"]["names"]["shortNames"]
        assert crd["spec"]["names"]["categories"] == ["tenantry"]
        assert "$ref" not in text
        assert "anyOf" not in text
        assert "title:" not in text


def _documents() -> list[dict[str, Any]]:
    return [
        doc
        for path in EXAMPLES
        for doc in yaml.safe_load_all(path.read_text())
        if doc and doc["apiVersion"].startswith("tenantry.io/")
    ]


@pytest.mark.parametrize(
    "manifest", _documents(), ids=lambda m: f"{m['kind']}/{m['metadata']['name']}"
)
def test_example_is_admitted_by_models_and_crd_schema(manifest: dict[str, Any]) -> None:
    parse_manifest(manifest)
    assert crd_errors(manifest) == []


def test_examples_hold_three_tiers_several_tenants_and_one_platform() -> None:
    found = load_manifests([REPO / "examples"], "tenantry-system")
    assert len(found.policies) == 3
    assert len(found.tenants) >= 3
    assert len(found.platforms) == 1


def test_validate_command_accepts_the_examples_and_names_bad_fields(tmp_path: Path) -> None:
    runner = CliRunner()
    ok = runner.invoke(app, ["validate", str(REPO / "examples")])
    assert ok.exit_code == 0, ok.output
    assert ok.output.startswith("ok: 3 policies")
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        "apiVersion: tenantry.io/v1alpha1\nkind: RateLimitPolicy\n"
        "metadata: {name: free}\nspec: {burst: 5}\n"
    )
    refused = runner.invoke(app, ["validate", str(bad)])
    assert refused.exit_code == 1
    assert "spec.burst: burst requires requestsPerMinute" in refused.output


def _untyped_nodes(schema: Any, path: str) -> list[str]:
    """Paths of schema nodes without a `type`: a structural schema types every node."""
    if not isinstance(schema, dict):
        return []
    missing = [] if "type" in schema else [path or "."]
    for name, prop in schema.get("properties", {}).items():
        missing += _untyped_nodes(prop, f"{path}.{name}")
    if "items" in schema:
        missing += _untyped_nodes(schema["items"], f"{path}[]")
    return missing


@pytest.mark.parametrize("name", sorted(render_crds()))
def test_every_schema_node_is_typed_and_list_map_keys_are_required(name: str) -> None:
    schema = yaml.safe_load(render_crds()[name])["spec"]["versions"][0]["schema"]
    assert _untyped_nodes(schema["openAPIV3Schema"], "") == []
    # A list keyed by map keys needs those keys required (Kubernetes refuses the CRD otherwise).
    for node in _nodes(schema["openAPIV3Schema"]):
        if node.get("x-kubernetes-list-type") == "map":
            assert set(node["x-kubernetes-list-map-keys"]) <= set(node["items"]["required"])


def _nodes(schema: Any) -> list[dict[str, Any]]:
    if not isinstance(schema, dict):
        return []
    found = [schema]
    for prop in schema.get("properties", {}).values():
        found += _nodes(prop)
    if "items" in schema:
        found += _nodes(schema["items"])
    return found


def test_kopf_peering_crds_are_generated_beside_ours() -> None:
    peering = {
        yaml.safe_load(text)["spec"]["names"]["kind"]: yaml.safe_load(text)["spec"]["scope"]
        for name, text in render_crds().items()
        if name.startswith("kopf.dev_")
    }
    assert peering == {"ClusterKopfPeering": "Cluster", "KopfPeering": "Namespaced"}
