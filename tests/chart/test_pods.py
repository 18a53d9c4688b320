"""Pods as the platform promises them: hardened, probed right, shut down gracefully."""

from __future__ import annotations

from typing import Any

import pytest

from tests.chart.conftest import (
    RELEASE,
    TENANTRY_COMPONENTS,
    Chart,
    Rendered,
    component_of,
    pod_spec,
)

pytestmark = pytest.mark.chart


def _containers(spec: dict[str, Any]) -> list[dict[str, Any]]:
    return [*spec.get("initContainers", []), *spec["containers"]]


def _merged_security(spec: dict[str, Any], container: dict[str, Any]) -> dict[str, Any]:
    """The effective security context: the container's fields over the pod's."""
    return {**spec.get("securityContext", {}), **container.get("securityContext", {})}


def test_every_container_is_non_root_read_only_unprivileged_and_seccomp_confined(
    rendered: Rendered,
) -> None:
    for workload in rendered.workloads():
        spec = pod_spec(workload)
        for container in _containers(spec):
            where = f"{workload['metadata']['name']}/{container['name']}"
            effective = _merged_security(spec, container)
            assert effective["runAsNonRoot"] is True, where
            assert effective["runAsUser"] > 0, where
            assert effective["readOnlyRootFilesystem"] is True, where
            assert effective["allowPrivilegeEscalation"] is False, where
            assert effective.get("privileged", False) is False, where
            assert effective["capabilities"]["drop"] == ["ALL"], where
            assert "add" not in effective["capabilities"], where
            assert effective["seccompProfile"] == {"type": "RuntimeDefault"}, where


def test_tenantry_pods_run_as_the_image_user_with_a_writable_tmp(rendered: Rendered) -> None:
    for workload in rendered.workloads():
        if component_of(workload) not in TENANTRY_COMPONENTS:
            continue
        spec = pod_spec(workload)
        assert spec["securityContext"]["runAsUser"] == 10001
        assert spec["securityContext"]["runAsGroup"] == 10001
        volumes = {volume["name"]: volume for volume in spec["volumes"]}
        assert "emptyDir" in volumes["tmp"], workload["metadata"]["name"]
        for container in spec["containers"]:
            mounts = {mount["mountPath"]: mount["name"] for mount in container["volumeMounts"]}
            assert mounts.get("/tmp") == "tmp", f"{workload['metadata']['name']} has no /tmp"


def test_every_container_requests_cpu_and_memory_and_limits_memory(rendered: Rendered) -> None:
    for workload in rendered.workloads():
        for container in _containers(pod_spec(workload)):
            resources = container["resources"]
            where = f"{workload['metadata']['name']}/{container['name']}"
            assert {"cpu", "memory"} <= resources["requests"].keys(), where
            assert "memory" in resources["limits"], where


def test_only_pods_that_use_the_kubernetes_api_mount_a_token(rendered: Rendered) -> None:
    uses_the_api = {"api", "worker", "operator"}
    for workload in rendered.workloads():
        spec = pod_spec(workload)
        component = component_of(workload)
        assert spec["automountServiceAccountToken"] is (component in uses_the_api), component
        if component in TENANTRY_COMPONENTS:
            assert spec["serviceAccountName"] == f"{RELEASE}-{component}"
    for account in rendered.of_kind("ServiceAccount"):
        component = component_of(account)
        assert account["automountServiceAccountToken"] is (component in uses_the_api), component


def _container(rendered: Rendered, component: str, kind: str = "Deployment") -> dict[str, Any]:
    containers: list[dict[str, Any]] = pod_spec(rendered.component(component, kind))["containers"]
    (container,) = containers
    return container


def test_api_probes_startup_liveness_and_readiness_on_their_own_paths(rendered: Rendered) -> None:
    api = _container(rendered, "api")
    probes = {
        name: (api[name]["httpGet"]["path"], api[name]["httpGet"]["port"])
        for name in ("startupProbe", "livenessProbe", "readinessProbe")
    }
    assert probes == {
        "startupProbe": ("/startupz", "http"),
        "livenessProbe": ("/livez", "http"),
        "readinessProbe": ("/readyz", "http"),
    }
    assert {"name": "http", "containerPort": 8000, "protocol": "TCP"} in api["ports"]


def _env(container: dict[str, Any]) -> dict[str, Any]:
    return {entry["name"]: entry.get("value", entry.get("valueFrom")) for entry in container["env"]}


def test_api_drains_before_the_kubelet_kills_it(rendered: Rendered) -> None:
    deployment = rendered.component("api")
    api = _container(rendered, "api")
    sleep = api["lifecycle"]["preStop"]["sleep"]["seconds"]
    graceful = int(_env(api)["TENANTRY_API__GRACEFUL_SHUTDOWN_SECONDS"])
    grace = pod_spec(deployment)["terminationGracePeriodSeconds"]
    assert sleep > 0
    assert grace > sleep + graceful
    assert deployment["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0


def test_worker_probes_by_command_and_outlasts_its_soft_shutdown(chart: Chart) -> None:
    for name in ("minimal", "prod"):
        rendered = chart.values_set(name)
        worker = _container(rendered, "worker")
        assert worker["livenessProbe"]["exec"]["command"] == ["tenantry", "worker", "probe", "live"]
        assert worker["readinessProbe"]["exec"]["command"] == [
            "tenantry",
            "worker",
            "probe",
            "ready",
        ]
        grace = pod_spec(rendered.component("worker"))["terminationGracePeriodSeconds"]
        soft_shutdown = float(_env(worker)["TENANTRY_WORKER__SOFT_SHUTDOWN_TIMEOUT_SECONDS"])
        assert soft_shutdown == {"minimal": 30, "prod": 60}[name]
        assert grace > soft_shutdown


def test_operator_is_live_on_kopfs_endpoint_and_has_no_readiness_probe(rendered: Rendered) -> None:
    operator = _container(rendered, "operator")
    assert operator["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "healthz"}
    ports = {port["name"]: port["containerPort"] for port in operator["ports"]}
    assert ports == {"healthz": 8080, "metrics": 9090}
    assert "readinessProbe" not in operator
    endpoint = _env(operator)["TENANTRY_OPERATOR__LIVENESS_ENDPOINT"]
    assert endpoint == "http://0.0.0.0:8080/healthz"


def test_the_api_spreads_over_zones_and_nodes(chart: Chart) -> None:
    spec = pod_spec(chart.values_set("prod").component("api"))
    constraints = {c["topologyKey"]: c for c in spec["topologySpreadConstraints"]}
    assert set(constraints) == {"topology.kubernetes.io/zone", "kubernetes.io/hostname"}
    selector = chart.values_set("prod").component("api")["spec"]["selector"]["matchLabels"]
    for constraint in constraints.values():
        assert constraint["labelSelector"]["matchLabels"] == selector
        assert constraint["matchLabelKeys"] == ["pod-template-hash"]


def test_credentials_come_from_secrets_never_from_values(rendered: Rendered) -> None:
    for workload in rendered.workloads():
        for container in _containers(pod_spec(workload)):
            for entry in container.get("env", []):
                if entry["name"] in (
                    "TENANTRY_DATABASE_URL",
                    "TENANTRY_REDIS_URL",
                    "TENANTRY_WORKER__BROKER_URL",
                ):
                    assert "secretKeyRef" in entry["valueFrom"], entry
                assert "://" not in str(entry.get("value", "")).replace("http://0.0.0.0", ""), entry
    for config in rendered.of_kind("ConfigMap"):
        assert not any("://" in str(value) for value in config["data"].values())


def test_components_get_only_the_credentials_they_use(chart: Chart) -> None:
    rendered = chart.values_set("prod")
    expected = {
        "api": {"TENANTRY_DATABASE_URL", "TENANTRY_REDIS_URL"},
        "worker": {"TENANTRY_DATABASE_URL", "TENANTRY_REDIS_URL"},
        "beat": {"TENANTRY_REDIS_URL"},
        "operator": set(),
        "migrations": {"TENANTRY_DATABASE_URL"},
    }
    for component, secrets in expected.items():
        kind = "Job" if component == "migrations" else "Deployment"
        env = _env(_container(rendered, component, kind))
        assert {name for name, value in env.items() if isinstance(value, dict)} == secrets
    api_env = _env(_container(rendered, "api"))
    assert api_env["TENANTRY_DATABASE_URL"]["secretKeyRef"] == {
        "name": "tenantry-database",
        "key": "url",
    }


def test_api_and_worker_read_the_registry_from_kubernetes(rendered: Rendered) -> None:
    for component in ("api", "worker"):
        assert _env(_container(rendered, component))["TENANTRY_REGISTRY__SOURCE"] == "kubernetes"


def test_migrations_run_as_a_hook_before_install_and_upgrade(chart: Chart) -> None:
    job = chart.values_set("prod").component("migrations", "Job")
    annotations = job["metadata"]["annotations"]
    assert annotations["helm.sh/hook"] == "pre-install,pre-upgrade"
    assert "before-hook-creation" in annotations["helm.sh/hook-delete-policy"]
    assert pod_spec(job)["restartPolicy"] == "Never"
    assert _container(chart.values_set("prod"), "migrations", "Job")["args"] == ["migrate"]


def test_the_local_limiter_shares_a_rate_among_the_api_floor(chart: Chart) -> None:
    prod = chart.values_set("prod")
    (platform,) = prod.of_kind("ApiPlatform")
    replicas = _env(_container(prod, "api"))["TENANTRY_API__REPLICAS"]
    assert int(replicas) == platform["spec"]["api"]["minReplicas"] == 3


def test_api_processes_share_their_metrics_on_an_in_memory_volume(chart: Chart) -> None:
    several = chart.render("--set", "api.workers=3")
    api = _container(several, "api")
    env = _env(api)
    assert env["TENANTRY_API__WORKERS"] == "3"
    folder = env["PROMETHEUS_MULTIPROC_DIR"]
    mounts = {mount["mountPath"]: mount["name"] for mount in api["volumeMounts"]}
    volumes = {volume["name"]: volume for volume in pod_spec(several.component("api"))["volumes"]}
    assert volumes[mounts[folder]]["emptyDir"] == {"medium": "Memory", "sizeLimit": "16Mi"}
    assert api["securityContext"]["readOnlyRootFilesystem"] is True


@pytest.mark.parametrize("values", ["minimal", "prod"])
def test_one_api_process_keeps_its_metrics_in_memory(chart: Chart, values: str) -> None:
    rendered = chart.values_set(values)
    api = _container(rendered, "api")
    assert _env(api)["TENANTRY_API__WORKERS"] == "1"
    assert "PROMETHEUS_MULTIPROC_DIR" not in _env(api)
    volumes = [volume["name"] for volume in pod_spec(rendered.component("api"))["volumes"]]
    assert volumes == ["tmp"]
