"""Values drive the chart: typos are refused, features appear only when asked for."""

from __future__ import annotations

import base64
import json
import subprocess
from typing import Any

import pytest

from tests.chart.conftest import (
    CHART,
    MONITORING_API,
    NAMESPACE,
    RELEASE,
    Chart,
    Rendered,
    pod_spec,
)

pytestmark = pytest.mark.chart

DEPLOYMENTS = ("api", "worker", "beat", "operator")


def _checksums(rendered: Rendered) -> dict[str, str]:
    return {
        name: rendered.component(name)["spec"]["template"]["metadata"]["annotations"][
            "checksum/config"
        ]
        for name in DEPLOYMENTS
    }


def test_a_settings_change_rolls_every_pod_and_an_unrelated_change_rolls_none(
    chart: Chart,
) -> None:
    before = _checksums(chart.values_set("minimal"))
    debug = _checksums(chart.render("--set", "logLevel=debug"))
    resized = _checksums(chart.render("--set", "api.resources.requests.cpu=2"))
    assert all(before[name] != debug[name] for name in DEPLOYMENTS)
    assert resized == before


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("apiReplicas=3", "at '': additional properties 'apiReplicas' not allowed"),
        (
            "api.autoscalng.minReplicas=2",
            "at '/api': additional properties 'autoscalng' not allowed",
        ),
        (
            "environment=production",
            "at '/environment': value must be one of 'dev', 'staging', 'prod'",
        ),
        (
            "database.url=postgresql://u:p@db/tenantry",
            "at '/database': additional properties 'url'",
        ),
        (
            "defaults.containerSecurityContext.readOnlyRootFileSystem=true",
            "'readOnlyRootFileSystem' not allowed",
        ),
        ("ingress.tls[0].secretName=api-tls", "at '/ingress/tls/0': missing property 'hosts'"),
        ("metrics.serviceMonitor.interval=often", "at '/metrics/serviceMonitor/interval'"),
        ("image.digest=latest", "at '/image/digest'"),
    ],
)
def test_the_schema_refuses_typos_and_clear_credentials_naming_the_key(
    chart: Chart, value: str, message: str
) -> None:
    assert message in chart.refusal("--set", value)


@pytest.mark.parametrize(
    ("values", "message"),
    [
        (
            ["api.terminationGracePeriodSeconds=20"],
            "api.terminationGracePeriodSeconds (20) must exceed api.preStopSleepSeconds + "
            "api.gracefulShutdownSeconds (25)",
        ),
        (
            ["worker.softShutdownSeconds=60", "worker.terminationGracePeriodSeconds=60"],
            "worker.terminationGracePeriodSeconds (60) must exceed worker.softShutdownSeconds (60)",
        ),
        (
            ["worker.autoscaling.minReplicas=12"],
            "worker.autoscaling.minReplicas (12) cannot exceed worker.autoscaling.maxReplicas (10)",
        ),
    ],
)
def test_inconsistent_timeouts_and_bounds_are_refused(
    chart: Chart, values: list[str], message: str
) -> None:
    args = [arg for value in values for arg in ("--set", value)]
    assert message in chart.refusal(*args)


def test_every_object_in_the_values_schema_refuses_unknown_keys() -> None:
    schema = json.loads((CHART / "values.schema.json").read_text())
    open_objects: list[str] = []

    def walk(node: Any, path: str) -> None:
        if isinstance(node, dict):
            if node.get("type") == "object":
                closed = node.get("additionalProperties") is False
                typed_map = isinstance(node.get("additionalProperties"), dict)
                passthrough = str(node.get("$comment", "")).startswith("Kubernetes pass-through")
                if not (closed or typed_map or passthrough):
                    open_objects.append(path)
                if "properties" in node and not closed:
                    open_objects.append(path)
            for key, child in node.items():
                walk(child, f"{path}/{key}")
        elif isinstance(node, list):
            for index, child in enumerate(node):
                walk(child, f"{path}/{index}")

    walk(schema, "")
    assert open_objects == []


def test_every_default_value_is_described_by_the_schema(chart: Chart) -> None:
    # A bare render validates values.yaml against values.schema.json; it must pass.
    assert chart.values_set("minimal").of_kind("Deployment")


def test_dev_runs_postgres_and_redis_in_the_release_with_generated_credentials(
    chart: Chart,
) -> None:
    dev = chart.values_set("dev")
    for service in ("postgresql", "redis"):
        deployment = dev.component(service)
        assert deployment["spec"]["replicas"] == 1
        assert dev.get("Service", f"{RELEASE}-{service}")
    secret = dev.get("Secret", f"{RELEASE}-dev-credentials")
    assert set(secret["data"]) == {
        "postgres-password",
        "redis-password",
        "database-url",
        "redis-url",
    }
    api_env = {e["name"]: e for e in pod_spec(dev.component("api"))["containers"][0]["env"]}
    assert api_env["TENANTRY_DATABASE_URL"]["valueFrom"]["secretKeyRef"] == {
        "name": f"{RELEASE}-dev-credentials",
        "key": "database-url",
    }
    hook = dev.component("migrations", "Job")["metadata"]["annotations"]["helm.sh/hook"]
    assert hook == "post-install,pre-upgrade"


def test_dev_credentials_agree_between_the_servers_and_the_urls(chart: Chart) -> None:
    dev = chart.values_set("dev")
    data = {
        key: base64.b64decode(value).decode()
        for key, value in dev.get("Secret", f"{RELEASE}-dev-credentials")["data"].items()
    }
    assert len(data["postgres-password"]) == 32
    assert data["database-url"] == (
        f"postgresql+asyncpg://tenantry:{data['postgres-password']}@{RELEASE}-postgresql:5432/tenantry"
    )
    assert data["redis-url"] == f"redis://:{data['redis-password']}@{RELEASE}-redis:6379/0"
    redis = pod_spec(dev.component("redis"))["containers"][0]
    assert redis["args"][:2] == ["--requirepass", "$(REDIS_PASSWORD)"]
    assert redis["env"][0]["valueFrom"]["secretKeyRef"]["key"] == "redis-password"
    postgres = {e["name"]: e for e in pod_spec(dev.component("postgresql"))["containers"][0]["env"]}
    assert postgres["POSTGRES_PASSWORD"]["valueFrom"]["secretKeyRef"]["key"] == "postgres-password"


def test_prod_uses_external_postgres_and_redis(chart: Chart) -> None:
    prod = chart.values_set("prod")
    names = {obj["metadata"]["name"] for obj in prod.objects}
    assert not {f"{RELEASE}-postgresql", f"{RELEASE}-redis", f"{RELEASE}-dev-credentials"} & names
    assert prod.of_kind("Secret") == []


def test_service_monitors_need_the_prometheus_operator_api(chart: Chart) -> None:
    prod = ["-f", str(CHART / "values-prod.yaml")]
    without = chart.render(*prod)
    with_api = chart.render(
        *prod, "--api-versions", MONITORING_API, "--set", "metrics.serviceMonitor.labels.team=sre"
    )
    assert without.of_kind("ServiceMonitor") == []
    monitors = with_api.of_kind("ServiceMonitor")
    assert {m["metadata"]["name"] for m in monitors} == {
        f"{RELEASE}-api",
        f"{RELEASE}-worker",
        f"{RELEASE}-operator",
    }
    for monitor in monitors:
        assert monitor["metadata"]["labels"]["release"] == "kube-prometheus-stack"
        assert monitor["metadata"]["labels"]["team"] == "sre"
        assert monitor["spec"]["endpoints"][0]["path"] == "/metrics"


def test_service_monitors_stay_off_by_default_even_with_the_api(chart: Chart) -> None:
    assert chart.render("--api-versions", MONITORING_API).of_kind("ServiceMonitor") == []


def _policy(rendered: Rendered, component: str) -> dict[str, Any]:
    spec: dict[str, Any] = rendered.get("NetworkPolicy", f"{RELEASE}-{component}")["spec"]
    return spec


def _egress_ports(spec: dict[str, Any]) -> set[int]:
    return {port["port"] for rule in spec["egress"] for port in rule.get("ports", [])}


def test_the_api_accepts_traffic_only_from_the_ingress_controller(chart: Chart) -> None:
    prod = chart.values_set("prod")
    api = _policy(prod, "api")
    assert api["policyTypes"] == ["Ingress", "Egress"]
    controller, metrics = api["ingress"]
    assert controller["from"] == [
        {
            "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "ingress-nginx"}},
            "podSelector": {"matchLabels": {"app.kubernetes.io/name": "ingress-nginx"}},
        }
    ]
    assert controller["ports"] == [{"port": 8000, "protocol": "TCP"}]
    assert metrics["from"] == [
        {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}
    ]


@pytest.mark.parametrize(
    ("component", "ports"),
    [
        ("api", {53, 5432, 6379, 443, 6443}),
        ("worker", {53, 5432, 6379, 443, 6443}),
        ("beat", {53, 6379}),
        ("operator", {53, 443, 6443}),
        ("migrations", {53, 5432}),
    ],
)
def test_each_component_reaches_only_dns_and_what_it_uses(
    chart: Chart, component: str, ports: set[int]
) -> None:
    spec = _policy(chart.values_set("prod"), component)
    assert _egress_ports(spec) == ports
    dns = spec["egress"][0]
    assert dns["to"][0]["podSelector"] == {"matchLabels": {"k8s-app": "kube-dns"}}
    assert {(p["port"], p["protocol"]) for p in dns["ports"]} == {(53, "UDP"), (53, "TCP")}


def test_egress_is_narrowed_to_the_configured_addresses(chart: Chart) -> None:
    spec = _policy(chart.values_set("all-features"), "api")
    by_port = {rule["ports"][0]["port"]: rule for rule in spec["egress"][1:]}
    assert by_port[443]["to"] == [{"ipBlock": {"cidr": "172.18.0.2/32"}}]
    assert by_port[6379]["to"][0]["podSelector"]["matchLabels"]["app.kubernetes.io/component"] == (
        "redis"
    )


def test_webhook_egress_excludes_private_ranges(chart: Chart) -> None:
    worker = _policy(chart.values_set("prod"), "worker")
    (webhooks,) = [rule for rule in worker["egress"] if "ipBlock" in rule.get("to", [{}])[0]]
    assert webhooks["to"][0]["ipBlock"]["cidr"] == "0.0.0.0/0"
    assert "10.0.0.0/8" in webhooks["to"][0]["ipBlock"]["except"]


def test_network_policies_are_off_unless_enabled(chart: Chart) -> None:
    assert chart.values_set("minimal").of_kind("NetworkPolicy") == []


def test_disruption_budgets_cover_the_scaled_components_only(rendered: Rendered) -> None:
    budgets = {b["metadata"]["name"]: b["spec"] for b in rendered.of_kind("PodDisruptionBudget")}
    assert set(budgets) <= {f"{RELEASE}-api", f"{RELEASE}-worker"}
    for spec in budgets.values():
        assert spec["maxUnavailable"] == 1


def test_prod_has_disruption_budgets_and_dev_has_none(chart: Chart) -> None:
    assert len(chart.values_set("prod").of_kind("PodDisruptionBudget")) == 2
    assert chart.values_set("dev").of_kind("PodDisruptionBudget") == []


def test_ingress_takes_its_class_hosts_paths_and_tls_from_values(chart: Chart) -> None:
    (ingress,) = chart.values_set("all-features").of_kind("Ingress")
    assert ingress["apiVersion"] == "networking.k8s.io/v1"
    spec = ingress["spec"]
    assert spec["ingressClassName"] == "nginx"
    assert spec["tls"] == [
        {
            "secretName": "tenantry-api-tls",
            "hosts": ["api.tenantry.example", "api.eu.tenantry.example"],
        }
    ]
    assert [rule["host"] for rule in spec["rules"]] == [
        "api.tenantry.example",
        "api.eu.tenantry.example",
    ]
    for rule in spec["rules"]:
        (path,) = rule["http"]["paths"]
        assert (path["path"], path["pathType"]) == ("/v1", "Prefix")
        assert path["backend"]["service"] == {"name": f"{RELEASE}-api", "port": {"name": "http"}}
    assert ingress["metadata"]["annotations"]["cert-manager.io/cluster-issuer"] == "letsencrypt"


INTERNAL_PATHS = ("/livez", "/readyz", "/startupz", "/metrics")


def _routes_to(path: dict[str, str], request_path: str) -> bool:
    """Whether an Ingress path sends `request_path` to the API (networking.k8s.io/v1 rules)."""
    if path["pathType"] == "Exact":
        return request_path == path["path"]
    prefix = path["path"].rstrip("/")
    return request_path == path["path"] or request_path.startswith(prefix + "/")


def test_the_ingress_keeps_probes_and_metrics_inside_the_cluster(rendered: Rendered) -> None:
    for ingress in rendered.of_kind("Ingress"):
        for rule in ingress["spec"]["rules"]:
            for path in rule["http"]["paths"]:
                exposed = [p for p in INTERNAL_PATHS if _routes_to(path, p)]
                assert exposed == [], f"{rule['host']}{path['path']} exposes {exposed}"


def test_no_ingress_unless_enabled(chart: Chart) -> None:
    assert chart.values_set("minimal").of_kind("Ingress") == []


def test_component_values_fall_back_to_the_shared_defaults(chart: Chart) -> None:
    rendered = chart.values_set("all-features")
    api = pod_spec(rendered.component("api"))
    beat = pod_spec(rendered.component("beat"))
    assert beat["nodeSelector"] == {"kubernetes.io/os": "linux"}
    assert beat["priorityClassName"] == "tenantry-critical"
    assert "nodeAffinity" in api["affinity"]
    assert "affinity" not in beat
    api_env = [entry["name"] for entry in api["containers"][0]["env"]]
    assert api_env[-2:] == ["TENANTRY_REDIS_TIMEOUT_SECONDS", "TENANTRY_API__KEEPALIVE_SECONDS"]
    annotations = rendered.component("beat")["spec"]["template"]["metadata"]["annotations"]
    assert annotations["team.example/owner"] == "platform"
    assert api["containers"][0]["image"].endswith("@sha256:" + "0123456789abcdef" * 4)


def _install_notes(helm: str, *args: str) -> str:
    """The NOTES a user reads after `helm install` (a client-side dry run needs no cluster)."""
    result = subprocess.run(
        [helm, "install", RELEASE, str(CHART), "--namespace", NAMESPACE, "--dry-run=client", *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout.partition("NOTES:")[2]


def test_install_notes_name_the_secrets_to_create_and_where_the_api_answers(helm: str) -> None:
    prod = _install_notes(helm, "-f", str(CHART / "values-prod.yaml"))
    assert "tenantry-database [url]" in prod
    assert "tenantry-redis [url]" in prod
    assert "https://api.tenantry.example/v1/" in prod
    assert "kubectl apply --server-side -f charts/tenantry/crds/" in prod
    dev = _install_notes(helm, "-f", str(CHART / "values-dev.yaml"))
    assert "[url]" not in dev
    assert "http://api.tenantry.localhost/v1/" in dev
    bare = _install_notes(helm)
    assert f"kubectl -n {NAMESPACE} port-forward svc/{RELEASE}-api 8000:80" in bare


def test_a_component_without_resources_gets_the_shared_default(chart: Chart) -> None:
    dev = chart.values_set("dev")
    for component in ("api", "worker", "beat", "operator"):
        (container,) = pod_spec(dev.component(component))["containers"]
        assert container["resources"] == {
            "requests": {"cpu": "50m", "memory": "128Mi"},
            "limits": {"memory": "384Mi"},
        }, component
