"""Rendering the chart with the real helm binary, once per values set and session."""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "charts" / "tenantry"
HERE = Path(__file__).resolve().parent

RELEASE = "tenantry"
NAMESPACE = "tenantry-system"
# A version kubernetes-validate bundles schemas for, and kind's current node image line.
KUBE_VERSION = "1.33.0"
MONITORING_API = "monitoring.coreos.com/v1"
ENVOY_GATEWAY_API = "gateway.envoyproxy.io/v1alpha1/SecurityPolicy"

# The environments a user installs, a bare install on the chart's defaults, and every feature
# at once. Each renders with the capabilities such a cluster would have.
VALUE_SETS: dict[str, list[str]] = {
    "minimal": [],
    "dev": ["-f", str(CHART / "values-dev.yaml")],
    "staging": ["-f", str(CHART / "values-staging.yaml"), "--api-versions", MONITORING_API],
    "prod": ["-f", str(CHART / "values-prod.yaml"), "--api-versions", MONITORING_API],
    "all-features": [
        "-f",
        str(CHART / "values-prod.yaml"),
        "-f",
        str(HERE / "values-all-features.yaml"),
        "--api-versions",
        MONITORING_API,
        "--api-versions",
        ENVOY_GATEWAY_API,
    ],
}

# Containers running the Tenantry image, as opposed to the dev PostgreSQL and Redis.
TENANTRY_COMPONENTS = ("api", "worker", "beat", "operator", "migrations")
POD_KINDS = ("Deployment", "Job", "StatefulSet", "DaemonSet")


@dataclass(frozen=True)
class Rendered:
    """The objects one `helm template` produced."""

    objects: list[dict[str, Any]]

    def of_kind(self, kind: str) -> list[dict[str, Any]]:
        return [obj for obj in self.objects if obj["kind"] == kind]

    def get(self, kind: str, name: str) -> dict[str, Any]:
        for obj in self.of_kind(kind):
            if obj["metadata"]["name"] == name:
                return obj
        names = [obj["metadata"]["name"] for obj in self.of_kind(kind)]
        raise AssertionError(f"no {kind} {name!r} rendered; {kind}s: {names}")

    def workloads(self) -> list[dict[str, Any]]:
        return [obj for obj in self.objects if obj["kind"] in POD_KINDS]

    def component(self, component: str, kind: str = "Deployment") -> dict[str, Any]:
        return self.get(kind, f"{RELEASE}-{component}")


def pod_spec(workload: dict[str, Any]) -> dict[str, Any]:
    spec: dict[str, Any] = workload["spec"]["template"]["spec"]
    return spec


def component_of(obj: dict[str, Any]) -> str:
    return str(obj["metadata"]["labels"].get("app.kubernetes.io/component", ""))


def _helm_template(helm: str, args: list[str]) -> subprocess.CompletedProcess[str]:
    command = [
        helm,
        "template",
        RELEASE,
        str(CHART),
        "--namespace",
        NAMESPACE,
        "--kube-version",
        KUBE_VERSION,
        "--include-crds",
        *args,
    ]
    return subprocess.run(command, capture_output=True, text=True, timeout=60, check=False)


class Chart:
    """Renders the chart; values sets are rendered once and shared by the whole session."""

    def __init__(self, helm: str) -> None:
        self.helm = helm
        self._rendered: dict[str, Rendered] = {}

    def values_set(self, name: str) -> Rendered:
        if name not in self._rendered:
            self._rendered[name] = self.render(*VALUE_SETS[name])
        return self._rendered[name]

    def render(self, *args: str) -> Rendered:
        result = _helm_template(self.helm, list(args))
        if result.returncode != 0:
            raise AssertionError(f"helm template {' '.join(args)} failed:\n{result.stderr}")
        objects = [doc for doc in yaml.safe_load_all(result.stdout) if doc]
        return Rendered(objects)

    def refusal(self, *args: str) -> str:
        """helm's error message for values the chart must refuse."""
        result = _helm_template(self.helm, list(args))
        if result.returncode == 0:
            raise AssertionError(f"helm template {' '.join(args)} rendered; it must refuse")
        return result.stderr


@pytest.fixture(scope="session")
def chart(helm: str) -> Chart:
    return Chart(helm)


@pytest.fixture(scope="session", params=list(VALUE_SETS))
def rendered(request: pytest.FixtureRequest, chart: Chart) -> Rendered:
    """Each values set in turn, rendered once per session."""
    return chart.values_set(request.param)
