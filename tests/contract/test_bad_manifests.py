"""Bad manifests are refused by the models and by the CRD schema alike, naming field and rule.

One table drives both, so the Python models and the generated CRDs cannot drift apart.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest

from tenantry.contract.manifests import ManifestError, load_manifests, parse_manifest
from tests.harness.crd_schema import crd_errors

POLICY: dict[str, Any] = {
    "apiVersion": "tenantry.io/v1alpha1",
    "kind": "RateLimitPolicy",
    "metadata": {"name": "standard", "namespace": "tenantry-system"},
    "spec": {"requestsPerMinute": 600, "burst": 50, "monthlyQuota": 1000},
}
TENANT: dict[str, Any] = {
    "apiVersion": "tenantry.io/v1alpha1",
    "kind": "ApiTenant",
    "metadata": {"name": "acme", "namespace": "team-a"},
    "spec": {
        "displayName": "Acme",
        "policyRef": {"name": "standard"},
        "keys": [{"name": "production"}],
    },
}
PLATFORM: dict[str, Any] = {
    "apiVersion": "tenantry.io/v1alpha1",
    "kind": "ApiPlatform",
    "metadata": {"name": "tenantry", "namespace": "tenantry-system"},
    "spec": {
        "api": {"deployment": "tenantry-api", "capacityPerReplica": 500},
        "worker": {"deployment": "tenantry-worker", "capacityPerReplica": 8},
    },
}
PRODUCT: dict[str, Any] = {
    "apiVersion": "tenantry.io/v1alpha1",
    "kind": "ApiProduct",
    "metadata": {"name": "flights", "namespace": "tenantry-system"},
    "spec": {
        "displayName": "Flight data",
        "routes": [
            {"method": "GET", "path": "/flights/{flight_id}", "scopes": ["flights:read"]},
            {"method": "GET", "path": "/status", "public": True},
        ],
    },
}


def _with(base: dict[str, Any], path: str, value: Any) -> dict[str, Any]:
    """A copy of `base` with `value` at the dotted `path` (`...` deletes the field)."""
    manifest = copy.deepcopy(base)
    *parents, leaf = path.split(".")
    node: Any = manifest
    for part in parents:
        node = node[int(part)] if isinstance(node, list) else node[part]
    if value is ...:
        del node[leaf]
    elif isinstance(node, list):
        node[int(leaf)] = value
    else:
        node[leaf] = value
    return manifest


# (manifest, field the error must name, words of the rule in the model's / the CRD's message)
BAD_MANIFESTS = [
    pytest.param(
        _with(POLICY, "spec.requestsPerMinutes", 10),
        "spec.requestsPerMinutes", "extra inputs are not permitted", "requestsPerMinutes",
        id="unknown-field",
    ),
    pytest.param(
        _with(POLICY, "spec.requestsPerMinute", -5),
        "spec.requestsPerMinute", "greater than or equal to 1", "minimum of 1",
        id="negative-rate",
    ),
    pytest.param(
        _with(POLICY, "spec.requestsPerMinute", ...),
        "spec.burst", "burst requires requestsPerMinute", "burst requires requestsPerMinute",
        id="burst-without-rate",
    ),
    pytest.param(
        _with(POLICY, "spec.reservedRequestsPerSecond", 11),
        "spec.reservedRequestsPerSecond", "cannot exceed requestsPerMinute / 60",
        "cannot exceed requestsPerMinute / 60",
        id="reserved-above-rate",
    ),
    pytest.param(
        _with(POLICY, "spec.jobPriority", "urgent"),
        "spec.jobPriority", "'low', 'default' or 'high'", "is not one of",
        id="unknown-job-priority",
    ),
    pytest.param(
        _with(POLICY, "spec.failureMode", "maybe"),
        "spec.failureMode", "'open', 'closed' or 'local'", "is not one of",
        id="unknown-failure-mode",
    ),
    pytest.param(
        _with(POLICY, "spec.routes", [
            {"method": "POST", "path": "/v1/jobs", "requestsPerMinute": 10},
            {"method": "POST", "path": "/v1/jobs", "requestsPerMinute": 20},
        ]),
        "spec.routes[1]", "duplicate", "duplicate",
        id="duplicate-route",
    ),
    pytest.param(
        _with(TENANT, "spec.keys.0.name", "Prod Key"),
        "spec.keys.0.name", "should match pattern", "does not match",
        id="malformed-key-name",
    ),
    pytest.param(
        _with(TENANT, "spec.keys", [{"name": "ci"}, {"name": "ci"}]),
        "spec.keys[1]", "duplicate", "duplicate",
        id="duplicate-key-name",
    ),
    pytest.param(
        _with(TENANT, "spec.keys.0.scopes", ["Reports Read"]),
        "spec.keys.0.scopes.0", "should match pattern", "does not match",
        id="scope-with-a-space",
    ),
    pytest.param(
        _with(TENANT, "spec.keys.0.scopes", ["a:b:c"]),
        "spec.keys.0.scopes.0", "should match pattern", "does not match",
        id="scope-with-two-colons",
    ),
    pytest.param(
        _with(TENANT, "spec.keys.0.scopes", ["reports:" + "r" * 292]),
        "spec.keys.0.scopes.0", "at most 64 characters", "is too long",
        id="scope-of-300-characters",
    ),
    pytest.param(
        _with(TENANT, "spec.allowedOrigins", ["app.acme.example"]),
        "spec.allowedOrigins.0", "should match pattern", "does not match",
        id="origin-without-scheme",
    ),
    pytest.param(
        _with(TENANT, "spec.overrides", {"requestsPerMinute": 0}),
        "spec.overrides.requestsPerMinute", "greater than or equal to 1", "minimum of 1",
        id="zero-rate-override",
    ),
    pytest.param(
        _with(TENANT, "spec.displayName", ...),
        "spec.displayName", "field required", "'displayName' is a required property",
        id="missing-display-name",
    ),
    pytest.param(
        _with(PLATFORM, "spec.api.minReplicas", 30),
        "spec.api.minReplicas", "minReplicas cannot exceed maxReplicas",
        "minReplicas cannot exceed maxReplicas",
        id="min-above-max-replicas",
    ),
    pytest.param(
        _with(PLATFORM, "spec.worker.capacityPerReplica", 0),
        "spec.worker.capacityPerReplica", "greater than 0", "less than or equal to the minimum",
        id="zero-capacity",
    ),
    pytest.param(
        _with(PRODUCT, "spec.routes.1.scopes", ["status:read"]),
        "spec.routes.1.scopes", "a public route needs no key", "a public route needs no key",
        id="public-route-with-scopes",
    ),
    pytest.param(
        _with(PRODUCT, "spec.routes.0.path", "flights/{flight_id}"),
        "spec.routes.0.path", "string should match pattern", "does not match",
        id="route-path-not-absolute",
    ),
    pytest.param(
        _with(PRODUCT, "spec.routes.0.scopes", ["flights"]),
        "spec.routes.0.scopes.0", "string should match pattern", "does not match",
        id="scope-without-action",
    ),
    pytest.param(
        _with(PRODUCT, "spec.routes", []),
        "spec.routes", "at least 1 item", "should be non-empty",
        id="product-without-routes",
    ),
]  # fmt: skip


def _normalise(line: str) -> str:
    """`spec.keys[1]` and `spec.keys.1` name the same field; compare them alike."""
    return line.lower().lstrip(".").replace("[", ".").replace("]", "")


@pytest.mark.parametrize(("manifest", "field", "model_says", "crd_says"), BAD_MANIFESTS)
def test_models_refuse_bad_manifest_naming_field_and_rule(
    manifest: dict[str, Any], field: str, model_says: str, crd_says: str
) -> None:
    with pytest.raises(ManifestError) as refused:
        parse_manifest(manifest)
    problems = [_normalise(p) for p in refused.value.problems]
    assert any(p.startswith(_normalise(field)) and model_says.lower() in p for p in problems), (
        problems
    )


@pytest.mark.parametrize(("manifest", "field", "model_says", "crd_says"), BAD_MANIFESTS)
def test_crd_schema_refuses_bad_manifest_naming_field_and_rule(
    manifest: dict[str, Any], field: str, model_says: str, crd_says: str
) -> None:
    errors = [_normalise(e) for e in crd_errors(manifest)]
    leaf = _normalise(field).rsplit(".", 1)
    # jsonschema reports an unknown or missing field on its parent object, naming the field.
    assert any(
        crd_says.lower() in e and (leaf[-1] in e or e.startswith(leaf[0])) for e in errors
    ), errors


@pytest.mark.parametrize("good", [POLICY, TENANT, PLATFORM, PRODUCT], ids=lambda m: m["kind"])
def test_good_manifest_is_admitted_by_models_and_crd(good: dict[str, Any]) -> None:
    parse_manifest(good)
    assert crd_errors(good) == []


def test_tenant_overriding_burst_alone_on_a_rated_tier_is_fine() -> None:
    parse_manifest(_with(TENANT, "spec.overrides", {"burst": 500}))
    assert crd_errors(_with(TENANT, "spec.overrides", {"burst": 500})) == []


def _write(tmp_path: Path, *documents: dict[str, Any]) -> Path:
    import yaml

    path = tmp_path / "manifests.yaml"
    path.write_text(yaml.safe_dump_all(documents))
    return path


def test_unknown_tier_is_refused_naming_the_tenant_and_the_tier(tmp_path: Path) -> None:
    path = _write(tmp_path, POLICY, _with(TENANT, "spec.policyRef.name", "platinum"))
    with pytest.raises(ManifestError) as refused:
        load_manifests([path], "tenantry-system")
    assert refused.value.problems == [
        "ApiTenant team-a/acme: spec.policyRef.name: unknown tier 'platinum' "
        "(no RateLimitPolicy in namespace tenantry-system)"
    ]


def test_override_that_breaks_the_tier_rules_is_refused_after_merging(tmp_path: Path) -> None:
    unrated = _with(_with(POLICY, "spec.requestsPerMinute", ...), "spec.burst", ...)
    path = _write(tmp_path, unrated, _with(TENANT, "spec.overrides", {"burst": 5}))
    with pytest.raises(ManifestError) as refused:
        load_manifests([path], "tenantry-system")
    assert refused.value.problems == [
        "ApiTenant team-a/acme: spec.overrides.burst: burst requires requestsPerMinute "
        "(a burst is extra requests above a rate)"
    ]


def test_every_problem_in_a_file_is_reported_with_its_location(tmp_path: Path) -> None:
    path = _write(
        tmp_path,
        _with(POLICY, "spec.requestsPerMinute", -1),
        _with(TENANT, "spec.suspended", "sometimes"),
    )
    with pytest.raises(ManifestError) as refused:
        load_manifests([path], "tenantry-system")
    assert [p.split(": ", 2)[:2] for p in refused.value.problems] == [
        [f"{path} (document 1, RateLimitPolicy standard)", "spec.requestsPerMinute"],
        [f"{path} (document 2, ApiTenant acme)", "spec.suspended"],
    ]


def test_other_kinds_in_the_files_are_left_alone_but_a_mistyped_version_of_ours_is_not(
    tmp_path: Path,
) -> None:
    namespace = {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "team-a"}}
    path = _write(tmp_path, namespace, POLICY, TENANT)
    assert len(load_manifests([path], "tenantry-system").tenants) == 1
    mistyped = _with(TENANT, "apiVersion", "tenantry.io/v1alpah1")
    with pytest.raises(ManifestError, match=r"apiVersion: expected 'tenantry\.io/v1alpha1'"):
        load_manifests([_write(tmp_path, POLICY, mistyped)], "tenantry-system")


def test_a_product_declaring_one_route_twice_is_refused_whatever_its_parameters_are_called() -> (
    None
):
    twice = _with(
        PRODUCT, "spec.routes.1", {"method": "GET", "path": "/flights/{code}", "scopes": []}
    )
    with pytest.raises(ManifestError) as refused:
        parse_manifest(twice)
    assert any(
        "spec.routes[1]: GET /flights/{code} is the same route as GET /flights/{flight_id}"
        in problem
        for problem in refused.value.problems
    ), refused.value.problems


def test_products_live_in_the_platform_namespace_and_never_share_a_route(tmp_path: Path) -> None:
    elsewhere = _with(_with(PRODUCT, "metadata.namespace", "team-a"), "metadata.name", "rogue")
    rival = _with(_with(PRODUCT, "metadata.name", "zeppelins"), "spec.routes", [
        {"method": "GET", "path": "/flights/{id}"}, {"method": "GET", "path": "/airships"},
    ])  # fmt: skip
    with pytest.raises(ManifestError) as refused:
        load_manifests([_write(tmp_path, PRODUCT, elsewhere, rival)], "tenantry-system")
    assert refused.value.problems == [
        "ApiProduct team-a/rogue: metadata.namespace: products live in the platform namespace "
        "'tenantry-system', where the platform team keeps them",
        "ApiProduct tenantry-system/zeppelins: spec.routes: GET /flights/{id} is already served "
        "for product 'flights' (GET /flights/{flight_id})",
    ]
