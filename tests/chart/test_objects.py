"""What the chart renders is what the API server would accept, for every values set."""

from __future__ import annotations

import subprocess
from typing import Any

import kubernetes_validate
import pytest
import yaml

from tests.chart.conftest import (
    CHART,
    ENVOY_GATEWAY_API,
    KUBE_VERSION,
    NAMESPACE,
    RELEASE,
    REPO,
    Chart,
    Rendered,
)
from tests.chart.gateway_schemas import schema_errors
from tests.harness.crd_schema import crd_errors

pytestmark = pytest.mark.chart


def _kubernetes_errors(obj: dict[str, Any], version: str = KUBE_VERSION) -> str | None:
    try:
        kubernetes_validate.validate(obj, version, strict=True)
    except kubernetes_validate.ValidationError as error:
        path = ".".join(str(part) for part in error.path)
        return f"{obj['kind']}/{obj['metadata']['name']}: {path}: {error.message}"
    return None


# Custom resources the chart renders: checked against their CRDs, not Kubernetes' schemas.
GATEWAY_KINDS = ("HTTPRoute", "SecurityPolicy", "ReferenceGrant")
CUSTOM_KINDS = (
    "ApiPlatform",
    "ServiceMonitor",
    "ClusterKopfPeering",
    "KopfPeering",
    *GATEWAY_KINDS,
)


def test_every_builtin_object_passes_the_strict_kubernetes_schema(rendered: Rendered) -> None:
    builtin = [obj for obj in rendered.objects if obj["kind"] not in CUSTOM_KINDS]
    errors = [error for obj in builtin if (error := _kubernetes_errors(obj))]
    assert not errors, "\n".join(errors)


def test_the_oldest_supported_kubernetes_accepts_every_object(chart: Chart) -> None:
    floor = yaml.safe_load((CHART / "Chart.yaml").read_text())["kubeVersion"]
    oldest = floor.removeprefix(">=").removesuffix("-0")
    prod = chart.render("-f", str(CHART / "values-prod.yaml"), "--kube-version", oldest)
    builtin = [obj for obj in prod.objects if obj["kind"] not in CUSTOM_KINDS]
    errors = [error for obj in builtin if (error := _kubernetes_errors(obj, oldest))]
    assert not errors, "\n".join(errors)


def test_the_api_platform_is_admitted_by_the_generated_crd(rendered: Rendered) -> None:
    (platform,) = rendered.of_kind("ApiPlatform")
    assert crd_errors(platform) == []


def test_gateway_objects_are_admitted_by_their_upstream_crd_schemas(rendered: Rendered) -> None:
    gateway = [obj for obj in rendered.objects if obj["kind"] in GATEWAY_KINDS]
    errors = [error for obj in gateway for error in schema_errors(obj)]
    assert not errors, "\n".join(errors)


@pytest.mark.parametrize(
    ("values", "refusal"),
    [
        (
            ["httpRoute.rules[0].filters[0].type=RequestHeaderModifier"],
            "filter.requestHeaderModifier must be specified for RequestHeaderModifier",
        ),
        (["httpRoute.rules[0].matches[0].path.value=/v1//jobs"], "must not contain '//'"),
        (
            [
                f"httpRoute.parentRefs[{i}].{field}"
                for i in (0, 1)
                for field in ("name=eg", "port=80")
            ],
            "sectionName must be unique",
        ),
    ],
)
def test_the_gateway_api_schema_refuses_a_route_the_api_server_would(
    chart: Chart, values: list[str], refusal: str
) -> None:
    """The vendored schema and its CEL rules are live: a bad route would not slip through."""
    args = ["--set", "httpRoute.enabled=true", *(a for v in values for a in ("--set", v))]
    (route,) = chart.render(*args).of_kind("HTTPRoute")
    assert any(refusal in error for error in schema_errors(route)), schema_errors(route)


def test_the_envoy_gateway_schema_refuses_an_unsupported_backend(chart: Chart) -> None:
    rendered = chart.render(
        "--api-versions",
        ENVOY_GATEWAY_API,
        "--set",
        "envoyGateway.securityPolicy.enabled=true",
        "--set",
        "envoyGateway.securityPolicy.targetRefs[0].name=flights",
    )
    (policy,) = rendered.of_kind("SecurityPolicy")
    assert schema_errors(policy) == []
    policy["spec"]["extAuth"]["http"]["backendRefs"][0]["kind"] = "Pod"
    assert any("only supports Service" in error for error in schema_errors(policy))
    policy["spec"]["extAuth"]["http"]["timeout"] = "1s"
    assert any("'timeout' was unexpected" in error for error in schema_errors(policy))
    assert policy["metadata"]["namespace"] == NAMESPACE


def test_service_monitors_select_the_services_that_expose_their_port(rendered: Rendered) -> None:
    services = rendered.of_kind("Service")
    for monitor in rendered.of_kind("ServiceMonitor"):
        assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
        selector = monitor["spec"]["selector"]["matchLabels"]
        ports = {endpoint["port"] for endpoint in monitor["spec"]["endpoints"]}
        matching = [
            service
            for service in services
            if selector.items() <= service["metadata"]["labels"].items()
            and ports <= {port["name"] for port in service["spec"]["ports"]}
        ]
        assert matching, f"ServiceMonitor {monitor['metadata']['name']} selects no Service"


@pytest.mark.parametrize(
    "values_file", ["values.yaml", "values-dev.yaml", "values-staging.yaml", "values-prod.yaml"]
)
def test_helm_lint_strict_is_clean(helm: str, values_file: str) -> None:
    result = subprocess.run(
        [
            helm,
            "lint",
            "--strict",
            str(CHART),
            "-f",
            str(CHART / values_file),
            "--kube-version",
            KUBE_VERSION,
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "[WARNING]" not in result.stdout, result.stdout
    assert "[ERROR]" not in result.stdout, result.stdout


def test_chart_crds_are_byte_identical_to_the_generated_crds() -> None:
    generated = {path.name: path.read_bytes() for path in (REPO / "crds").glob("*.yaml")}
    shipped = {path.name: path.read_bytes() for path in (CHART / "crds").glob("*.yaml")}
    assert generated, "crds/ is empty: run `make crds`"
    assert shipped == generated, "charts/tenantry/crds differs from crds/: run `make chart-crds`"


def test_include_crds_renders_every_custom_resource_definition(chart: Chart) -> None:
    kinds = {
        crd["spec"]["names"]["kind"]
        for crd in chart.values_set("minimal").of_kind("CustomResourceDefinition")
    }
    assert kinds == {
        "ApiTenant",
        "RateLimitPolicy",
        "ApiPlatform",
        "ClusterKopfPeering",
        "KopfPeering",
        "ApiProduct",
    }


def test_the_operator_owns_autoscaling_so_helm_renders_no_hpa_and_no_replicas(
    rendered: Rendered,
) -> None:
    assert rendered.of_kind("HorizontalPodAutoscaler") == []
    for component in ("api", "worker"):
        assert "replicas" not in rendered.component(component)["spec"], component


def test_the_api_platform_names_the_rendered_deployments(chart: Chart) -> None:
    prod = chart.values_set("prod")
    (platform,) = prod.of_kind("ApiPlatform")
    deployments = {obj["metadata"]["name"] for obj in prod.of_kind("Deployment")}
    spec = platform["spec"]
    assert spec["api"]["deployment"] in deployments
    assert spec["worker"]["deployment"] in deployments
    assert platform["metadata"]["namespace"] == "tenantry-system"
    assert (spec["api"]["minReplicas"], spec["api"]["maxReplicas"]) == (3, 30)
    assert spec["api"]["behavior"]["scaleDown"]["stabilizationWindowSeconds"] == 300
    assert spec["worker"]["capacityPerReplica"] == 8


@pytest.mark.parametrize("component", ["beat", "operator"])
def test_singletons_run_one_replica_replaced_by_recreate(
    rendered: Rendered, component: str
) -> None:
    spec = rendered.component(component)["spec"]
    assert spec["replicas"] == 1
    assert spec["strategy"] == {"type": "Recreate"}


def test_every_object_carries_the_standard_labels(rendered: Rendered) -> None:
    for obj in rendered.objects:
        if obj["kind"] == "CustomResourceDefinition":
            continue
        labels = obj["metadata"]["labels"]
        where = f"{obj['kind']}/{obj['metadata']['name']}"
        assert labels["app.kubernetes.io/name"] == "tenantry", where
        assert labels["app.kubernetes.io/instance"] == RELEASE, where
        assert labels["app.kubernetes.io/managed-by"] == "Helm", where
        assert labels["app.kubernetes.io/part-of"] == "tenantry", where
        assert "app.kubernetes.io/component" in labels, where
        assert "app.kubernetes.io/version" in labels, where
        assert labels["helm.sh/chart"].startswith("tenantry-"), where


SELECTOR_KEYS = {
    "app.kubernetes.io/name",
    "app.kubernetes.io/instance",
    "app.kubernetes.io/component",
}


def test_selectors_use_name_instance_and_component_only(rendered: Rendered) -> None:
    for workload in rendered.of_kind("Deployment"):
        selector = workload["spec"]["selector"]["matchLabels"]
        assert set(selector) == SELECTOR_KEYS, workload["metadata"]["name"]
        assert selector.items() <= workload["spec"]["template"]["metadata"]["labels"].items()
    for service in rendered.of_kind("Service"):
        assert set(service["spec"]["selector"]) == SELECTOR_KEYS, service["metadata"]["name"]
    for budget in rendered.of_kind("PodDisruptionBudget"):
        assert set(budget["spec"]["selector"]["matchLabels"]) == SELECTOR_KEYS


def test_every_service_selects_a_rendered_pod_template(rendered: Rendered) -> None:
    templates = [
        w["spec"]["template"]["metadata"]["labels"] for w in rendered.of_kind("Deployment")
    ]
    for service in rendered.of_kind("Service"):
        selector = service["spec"]["selector"].items()
        assert any(selector <= labels.items() for labels in templates), service["metadata"]["name"]


def test_the_operator_peers_through_a_peering_object_named_after_the_release(
    chart: Chart,
) -> None:
    minimal = chart.values_set("minimal")
    (peering,) = minimal.of_kind("ClusterKopfPeering")
    assert crd_errors(peering) == []
    (operator,) = [
        d for d in minimal.of_kind("Deployment") if d["metadata"]["name"].endswith("-operator")
    ]
    env = {
        e["name"]: e.get("value")
        for e in operator["spec"]["template"]["spec"]["containers"][0]["env"]
    }
    assert env["TENANTRY_OPERATOR__STANDALONE"] == "false"
    assert env["TENANTRY_OPERATOR__PEERING_NAME"] == peering["metadata"]["name"]


def test_an_operator_limited_to_namespaces_peers_in_each_of_them(chart: Chart) -> None:
    rendered = chart.render("--set", "operator.watchNamespaces={team-a,team-b}")
    assert rendered.of_kind("ClusterKopfPeering") == []
    namespaces = sorted(p["metadata"]["namespace"] for p in rendered.of_kind("KopfPeering"))
    assert namespaces == sorted(
        ["team-a", "team-b", rendered.of_kind("ApiPlatform")[0]["metadata"]["namespace"]]
    )


def test_a_standalone_operator_renders_no_peering(chart: Chart) -> None:
    rendered = chart.render("--set", "operator.standalone=true")
    assert rendered.of_kind("ClusterKopfPeering") == rendered.of_kind("KopfPeering") == []
