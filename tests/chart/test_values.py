"""Values drive the chart: typos are refused, features appear only when asked for."""

from __future__ import annotations

import base64
import json
import re
import subprocess
from typing import Any

import pytest

from tests.chart.conftest import (
    CHART,
    ENVOY_GATEWAY_API,
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
        (
            "api.check.gatewayNamespace={envoy-gateway-system}",
            "at '/api/check': additional properties 'gatewayNamespace' not allowed",
        ),
        (
            "httpRoute.parentRefs[0].sectionname=http",
            "at '/httpRoute/parentRefs/0': additional properties 'sectionname' not allowed",
        ),
        (
            "httpRoute.rules[0].matches[0].path.type=Prefix",
            "at '/httpRoute/rules/0/matches/0/path/type': value must be one of",
        ),
        (
            "envoyGateway.securityPolicy.targetRefs[0].namespace=Team_A",
            "at '/envoyGateway/securityPolicy/targetRefs/0/namespace'",
        ),
        (
            "worker.broker.url=amqp://u:p@rabbitmq:5672/",
            "at '/worker/broker': additional properties 'url' not allowed",
        ),
        (
            "envoyGateway.securityPolicy.failClosed=true",
            "at '/envoyGateway/securityPolicy': additional properties 'failClosed' not allowed",
        ),
        ("api.workers=0", "at '/api/workers': minimum: got 0, want 1"),
        ("api.wokers=2", "at '/api': additional properties 'wokers' not allowed"),
        ("api.metricsDirSizeLimit=lots", "at '/api/metricsDirSizeLimit'"),
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
        (["api.check.port=8000"], "api.check.port (8000) is the API's own port"),
        (
            ["api.service.checkPort=80"],
            "api.service.checkPort (80) must differ from api.service.port (80)",
        ),
        (
            ["envoyGateway.securityPolicy.enabled=true"],
            "envoyGateway.securityPolicy.enabled needs the HTTPRoutes to protect",
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


ENVOY_PROXIES = {
    "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "envoy-gateway-system"}},
    "podSelector": {"matchLabels": {"app.kubernetes.io/name": "envoy"}},
}


def _ingress_ports(rule: dict[str, Any]) -> set[int]:
    return {port["port"] for port in rule["ports"]}


def test_the_api_accepts_requests_only_from_the_gateways_proxies(chart: Chart) -> None:
    api = _policy(chart.values_set("prod"), "api")
    assert api["policyTypes"] == ["Ingress", "Egress"]
    requests, check, metrics = api["ingress"]
    assert requests["from"] == [ENVOY_PROXIES]
    assert requests["ports"] == [{"port": 8000, "protocol": "TCP"}]
    assert check["from"] == [ENVOY_PROXIES]
    assert check["ports"] == [{"port": 8081, "protocol": "TCP"}]
    assert metrics["from"] == [
        {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}
    ]
    assert metrics["ports"] == [{"port": 8000, "protocol": "TCP"}]


def test_the_ingress_controller_is_the_default_peer_of_the_http_port(chart: Chart) -> None:
    api = _policy(chart.render("--set", "networkPolicy.enabled=true"), "api")
    (requests,) = api["ingress"]
    assert requests["from"] == [
        {
            "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "ingress-nginx"}},
            "podSelector": {"matchLabels": {"app.kubernetes.io/name": "ingress-nginx"}},
        }
    ]


def _namespace_peer(name: str, pods: dict[str, Any] | None = None) -> dict[str, Any]:
    peer: dict[str, Any] = {
        "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": name}}
    }
    if pods:
        peer["podSelector"] = pods
    return peer


@pytest.mark.parametrize(
    ("values", "check_port", "peers"),
    [
        ([], 8081, []),
        (
            ["api.check.gatewayNamespaces={envoy-gateway-system}"],
            8081,
            [_namespace_peer("envoy-gateway-system")],
        ),
        (
            [
                "api.check.gatewayNamespaces={edge,envoy-gateway-system}",
                "api.check.gatewayPodSelector.matchLabels.app=envoy",
                "api.check.port=9001",
            ],
            9001,
            [
                _namespace_peer("edge", {"matchLabels": {"app": "envoy"}}),
                _namespace_peer("envoy-gateway-system", {"matchLabels": {"app": "envoy"}}),
            ],
        ),
    ],
)
def test_the_check_port_admits_only_the_gateway_namespaces(
    chart: Chart, values: list[str], check_port: int, peers: list[dict[str, Any]]
) -> None:
    args = [
        "--set",
        "networkPolicy.enabled=true",
        "--set",
        "networkPolicy.metricsFrom[0].podSelector.matchLabels.app=prometheus",
    ]
    rendered = chart.render(*args, *(arg for value in values for arg in ("--set", value)))
    rules = _policy(rendered, "api")["ingress"]
    # A rule without `ports` would admit every port, the check's included.
    assert all(rule.get("ports") for rule in rules)
    admitting = [rule for rule in rules if check_port in _ingress_ports(rule)]
    assert [peer for rule in admitting for peer in rule["from"]] == peers
    for rule in admitting:
        assert _ingress_ports(rule) == {check_port}, "the HTTP port's peers reach the check"


def test_the_check_listens_on_a_named_port_of_its_own_behind_the_service(chart: Chart) -> None:
    rendered = chart.render("--set", "api.check.port=9001", "--set", "api.service.checkPort=9443")
    (container,) = pod_spec(rendered.component("api"))["containers"]
    assert {port["name"]: port["containerPort"] for port in container["ports"]} == {
        "http": 8000,
        "check": 9001,
    }
    env = {entry["name"]: entry.get("value") for entry in container["env"]}
    assert env["TENANTRY_API__CHECK_PORT"] == "9001"
    service = rendered.get("Service", f"{RELEASE}-api")
    assert [(p["name"], p["port"], p["targetPort"]) for p in service["spec"]["ports"]] == [
        ("http", 80, "http"),
        ("check", 9443, "check"),
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


def _public_backends(rendered: Rendered) -> list[tuple[str, str, int | str]]:
    """(kind, Service, port) of every backend the Ingresses and HTTPRoutes route to."""
    backends: list[tuple[str, str, int | str]] = []
    for ingress in rendered.of_kind("Ingress"):
        for rule in ingress["spec"]["rules"]:
            for path in rule["http"]["paths"]:
                service = path["backend"]["service"]
                port = service["port"].get("name", service["port"].get("number"))
                backends.append(("Ingress", service["name"], port))
    for route in rendered.of_kind("HTTPRoute"):
        for route_rule in route["spec"]["rules"]:
            for ref in route_rule["backendRefs"]:
                backends.append(("HTTPRoute", ref["name"], ref["port"]))
    return backends


@pytest.mark.parametrize(
    ("values_set", "kinds"),
    [
        ("minimal", set()),
        ("dev", {"HTTPRoute"}),
        ("staging", {"HTTPRoute"}),
        ("prod", {"HTTPRoute"}),
        ("all-features", {"Ingress", "HTTPRoute"}),
    ],
)
def test_public_routes_lead_to_the_api_http_port_never_to_the_check(
    chart: Chart, values_set: str, kinds: set[str]
) -> None:
    rendered = chart.values_set(values_set)
    service = rendered.get("Service", f"{RELEASE}-api")
    ports = {port["name"]: port["port"] for port in service["spec"]["ports"]}
    backends = _public_backends(rendered)
    assert {kind for kind, _, _ in backends} == kinds
    for kind, name, port in backends:
        assert name == service["metadata"]["name"], kind
        assert port in ("http", ports["http"]), f"{kind} routes to port {port}"
        assert port not in ("check", ports["check"]), f"{kind} exposes the gateway check"


def test_the_http_route_takes_its_parents_hostnames_and_rules_from_values(chart: Chart) -> None:
    (route,) = chart.values_set("all-features").of_kind("HTTPRoute")
    assert route["apiVersion"] == "gateway.networking.k8s.io/v1"
    assert route["metadata"]["annotations"] == {"gateway.example/team": "platform"}
    spec = route["spec"]
    assert spec["parentRefs"] == [
        {"name": "public", "namespace": "envoy-gateway-system", "sectionName": "https"},
        {"name": "internal", "namespace": "envoy-gateway-system", "port": 80},
    ]
    assert spec["hostnames"] == ["api.tenantry.example", "api.eu.tenantry.example"]
    first, second = spec["rules"]
    assert [match["path"]["value"] for match in first["matches"]] == ["/v1", "/v1"]
    assert first["matches"][0]["method"] == "GET"
    assert first["filters"][0]["type"] == "ResponseHeaderModifier"
    assert second["matches"] == [{"path": {"type": "Exact", "value": "/openapi.json"}}]
    assert "filters" not in second
    for rule in spec["rules"]:
        assert rule["backendRefs"] == [{"name": f"{RELEASE}-api", "port": 80, "weight": 1}]


def test_no_http_route_unless_enabled(chart: Chart) -> None:
    assert chart.values_set("minimal").of_kind("HTTPRoute") == []


SECURITY_POLICY = [
    "--set",
    "envoyGateway.securityPolicy.enabled=true",
    "--set",
    "envoyGateway.securityPolicy.targetRefs[0].name=flights",
]


@pytest.mark.parametrize(
    ("enabled", "cluster_serves_it", "policies"),
    [(False, False, 0), (False, True, 0), (True, False, 0), (True, True, 1)],
)
def test_the_security_policy_needs_its_value_and_the_envoy_gateway_api(
    chart: Chart, enabled: bool, cluster_serves_it: bool, policies: int
) -> None:
    args = [
        *(SECURITY_POLICY if enabled else []),
        *(["--api-versions", ENVOY_GATEWAY_API] if cluster_serves_it else []),
    ]
    rendered = chart.render(*args)
    assert len(rendered.of_kind("SecurityPolicy")) == policies
    assert rendered.of_kind("ReferenceGrant") == []


def _policies_by_namespace(rendered: Rendered) -> dict[str, dict[str, Any]]:
    return {p["metadata"]["namespace"]: p for p in rendered.of_kind("SecurityPolicy")}


def test_one_security_policy_per_namespace_targets_the_configured_routes(chart: Chart) -> None:
    policies = _policies_by_namespace(chart.values_set("all-features"))
    targets = {
        namespace: [ref["name"] for ref in policy["spec"]["targetRefs"]]
        for namespace, policy in policies.items()
    }
    assert targets == {NAMESPACE: ["flights"], "team-a": ["hotels"], "team-b": ["cars", "trains"]}
    for policy in policies.values():
        assert policy["apiVersion"] == "gateway.envoyproxy.io/v1alpha1"
        assert policy["metadata"]["name"] == f"{RELEASE}-gateway-check"
        for ref in policy["spec"]["targetRefs"]:
            assert (ref["group"], ref["kind"]) == ("gateway.networking.k8s.io", "HTTPRoute")


def test_the_security_policy_asks_the_check_port_under_authz(chart: Chart) -> None:
    rendered = chart.values_set("all-features")
    service = rendered.get("Service", f"{RELEASE}-api")
    check_port = {p["name"]: p["port"] for p in service["spec"]["ports"]}["check"]
    for policy in rendered.of_kind("SecurityPolicy"):
        ext_auth = policy["spec"]["extAuth"]
        assert ext_auth["http"]["backendRefs"] == [
            {"name": f"{RELEASE}-api", "namespace": NAMESPACE, "port": check_port}
        ]
        assert ext_auth["http"]["path"] == "/authz"
        assert ext_auth["http"]["headersToBackend"] == [
            "X-Tenantry-Tenant",
            "X-Tenantry-Tier",
            "X-Tenantry-Key",
            "X-Tenantry-Scopes",
            "X-Request-ID",
            "RateLimit",
            "RateLimit-Policy",
        ]
        assert {"Authorization", "X-API-Key", "X-Forwarded-For"} <= set(
            ext_auth["headersToExtAuth"]
        )
        assert ext_auth["failOpen"] is True


def test_the_security_policy_fails_closed_by_default(chart: Chart) -> None:
    (policy,) = chart.render(*SECURITY_POLICY, "--api-versions", ENVOY_GATEWAY_API).of_kind(
        "SecurityPolicy"
    )
    assert policy["spec"]["extAuth"]["failOpen"] is False
    assert policy["metadata"]["namespace"] == NAMESPACE


def test_a_reference_grant_admits_only_the_other_namespaces_policies(chart: Chart) -> None:
    (grant,) = chart.values_set("all-features").of_kind("ReferenceGrant")
    assert grant["apiVersion"] == "gateway.networking.k8s.io/v1beta1"
    assert grant["metadata"]["namespace"] == NAMESPACE
    assert grant["spec"]["from"] == [
        {"group": "gateway.envoyproxy.io", "kind": "SecurityPolicy", "namespace": namespace}
        for namespace in ("team-a", "team-b")
    ]
    assert grant["spec"]["to"] == [{"group": "", "kind": "Service", "name": f"{RELEASE}-api"}]


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


INTERNAL_PATHS = ("/livez", "/readyz", "/startupz", "/metrics", "/authz/v1/limits")


def _prefix_routes_to(prefix: str, request_path: str) -> bool:
    """Prefix matching by whole path elements, as both Ingress and Gateway API define it."""
    trimmed = prefix.rstrip("/")
    return request_path == prefix or request_path.startswith(trimmed + "/")


def _routes_to(path: dict[str, str], request_path: str) -> bool:
    """Whether an Ingress path sends `request_path` to the API (networking.k8s.io/v1 rules)."""
    if path["pathType"] == "Exact":
        return request_path == path["path"]
    return _prefix_routes_to(path["path"], request_path)


def _http_route_routes_to(match: dict[str, Any], request_path: str) -> bool:
    """Whether an HTTPRoute match can send `request_path` to the API (absent path: prefix /)."""
    path = match.get("path", {"type": "PathPrefix", "value": "/"})
    value = str(path["value"])
    if path["type"] == "Exact":
        return request_path == value
    if path["type"] == "RegularExpression":
        return re.fullmatch(value, request_path) is not None
    return _prefix_routes_to(value, request_path)


def test_public_routes_keep_probes_metrics_and_the_check_inside(rendered: Rendered) -> None:
    for ingress in rendered.of_kind("Ingress"):
        for rule in ingress["spec"]["rules"]:
            for path in rule["http"]["paths"]:
                exposed = [p for p in INTERNAL_PATHS if _routes_to(path, p)]
                assert exposed == [], f"{rule['host']}{path['path']} exposes {exposed}"
    for route in rendered.of_kind("HTTPRoute"):
        for route_rule in route["spec"]["rules"]:
            for match in route_rule.get("matches", [{}]):
                exposed = [p for p in INTERNAL_PATHS if _http_route_routes_to(match, p)]
                assert exposed == [], f"HTTPRoute match {match} exposes {exposed}"


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
    assert "Gateway envoy-gateway-system/public (listener https)" in prod
    assert "https://api.tenantry.example/v1/" in prod
    assert f"http://{RELEASE}-api.{NAMESPACE}.svc:8081/authz/" in prod
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


def _env_of(rendered: Rendered, component: str, kind: str = "Deployment") -> dict[str, Any]:
    (container,) = pod_spec(rendered.get(kind, f"{RELEASE}-{component}"))["containers"]
    return {entry["name"]: entry.get("value", entry.get("valueFrom")) for entry in container["env"]}


def test_a_rabbitmq_broker_comes_from_its_secret_to_the_jobs_publishers_and_consumers(
    chart: Chart,
) -> None:
    rendered = chart.render(
        "-f",
        str(CHART / "values-prod.yaml"),
        "--set",
        "worker.broker.existingSecret=rabbitmq-credentials",
        "--set",
        "worker.broker.urlKey=amqp-url",
        "--set",
        "worker.broker.consumerTimeoutSeconds=3600",
    )
    for component in ("api", "worker", "beat"):
        env = _env_of(rendered, component)
        assert env["TENANTRY_WORKER__BROKER_URL"] == {
            "secretKeyRef": {"name": "rabbitmq-credentials", "key": "amqp-url"}
        }
        assert env["TENANTRY_WORKER__BROKER_CONSUMER_TIMEOUT_SECONDS"] == "3600"
        # Redis stays: limits, usage and job slots live there whatever the broker.
        assert "TENANTRY_REDIS_URL" in env
        assert {5672, 5671} <= _egress_ports(_policy(rendered, component))
    for component, kind in (("operator", "Deployment"), ("migrations", "Job")):
        assert "TENANTRY_WORKER__BROKER_URL" not in _env_of(rendered, component, kind)
        assert 5672 not in _egress_ports(_policy(rendered, component))


def test_without_a_broker_secret_redis_is_the_broker(chart: Chart) -> None:
    rendered = chart.values_set("prod")
    for component in ("api", "worker", "beat"):
        assert "TENANTRY_WORKER__BROKER_URL" not in _env_of(rendered, component)
        assert 5672 not in _egress_ports(_policy(rendered, component))
