"""The chart, the image, skaffold and the application agree, so the parts cannot drift apart."""

from __future__ import annotations

import fnmatch
import inspect
import re
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import BaseModel
from starlette.routing import Match

from tenantry.settings import Settings
from tests.chart.conftest import (
    CHART,
    NAMESPACE,
    REPO,
    TENANTRY_COMPONENTS,
    Chart,
    Rendered,
    component_of,
    pod_spec,
)

pytestmark = pytest.mark.chart

TENANTRY = str(Path(sys.executable).with_name("tenantry"))


def _tenantry_containers(rendered: Rendered) -> list[dict[str, Any]]:
    return [
        container
        for workload in rendered.workloads()
        if component_of(workload) in TENANTRY_COMPONENTS
        for container in pod_spec(workload)["containers"]
    ]


def _invocations(rendered: Rendered) -> set[tuple[str, ...]]:
    """Every `tenantry ...` command line the chart makes a container or a probe run."""
    found: set[tuple[str, ...]] = set()
    for container in _tenantry_containers(rendered):
        assert "command" not in container, "the image's entrypoint is `tenantry`"
        found.add(tuple(container["args"]))
        for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
            command = container.get(probe, {}).get("exec", {}).get("command")
            if command:
                assert command[0] == "tenantry", command
                found.add(tuple(command[1:]))
    return found


def test_every_rendered_command_is_a_tenantry_invocation(chart: Chart) -> None:
    invocations = _invocations(chart.values_set("prod")) | _invocations(chart.values_set("dev"))
    assert ("api",) in invocations
    assert ("worker", "probe", "live") in invocations
    unknown: dict[str, list[str]] = {}
    for args in sorted(invocations):
        result = subprocess.run(
            [TENANTRY, *args, "--help"], capture_output=True, text=True, timeout=60, check=False
        )
        if result.returncode != 0:
            output = (result.stderr + result.stdout).splitlines()
            unknown[" ".join(args)] = [line.strip("│ ") for line in output if "No such" in line]
    assert not unknown, f"commands the chart runs that `tenantry` does not have: {unknown}"


def _settings_field(env_name: str) -> bool:
    """Whether TENANTRY_A__B names the field `b` of the group `a` of Settings."""
    parts = env_name.removeprefix("TENANTRY_").lower().split("__")
    model: type[BaseModel] = Settings
    for index, part in enumerate(parts):
        field = model.model_fields.get(part)
        if field is None:
            return False
        annotation = field.annotation
        if index < len(parts) - 1:
            if not (inspect.isclass(annotation) and issubclass(annotation, BaseModel)):
                return False
            model = annotation
    return True


def _environment(rendered: Rendered, container: dict[str, Any]) -> dict[str, str]:
    """The TENANTRY_* variables a container starts with, Secrets replaced by sample URLs."""
    samples = {
        "TENANTRY_DATABASE_URL": "postgresql+asyncpg://tenantry:secret@postgres:5432/tenantry",
        "TENANTRY_REDIS_URL": "redis://:secret@redis:6379/0",
    }
    env: dict[str, str] = {}
    for source in container.get("envFrom", []):
        config = rendered.get("ConfigMap", source["configMapRef"]["name"])
        env.update(config["data"])
    for entry in container.get("env", []):
        env[entry["name"]] = entry["value"] if "value" in entry else samples[entry["name"]]
    return {name: value for name, value in env.items() if name.startswith("TENANTRY_")}


def test_every_setting_the_chart_sets_is_a_field_of_settings(rendered: Rendered) -> None:
    names = {
        name
        for container in _tenantry_containers(rendered)
        for name in _environment(rendered, container)
    }
    assert names, "the chart sets no TENANTRY_ variable"
    assert sorted(name for name in names if not _settings_field(name)) == []


def test_every_component_environment_is_accepted_by_settings(
    chart: Chart, monkeypatch: pytest.MonkeyPatch
) -> None:
    rendered = chart.values_set("all-features")
    for container in _tenantry_containers(rendered):
        with monkeypatch.context() as scoped:
            for name, value in _environment(rendered, container).items():
                scoped.setenv(name, value)
            settings = Settings()
        assert settings.platform_namespace == NAMESPACE
        assert settings.environment == "prod"
        if container["name"] == "worker":
            assert settings.worker.soft_shutdown_timeout_seconds == 60
        if container["name"] == "api":
            assert (settings.api.host, settings.api.port) == ("0.0.0.0", 8000)
            ports = {port["name"]: port["containerPort"] for port in container["ports"]}
            assert settings.api.check_port == ports["check"] == 8081
            assert settings.registry.source == "kubernetes"
        if container["name"] == "operator":
            assert settings.operator.namespaces == ["team-a", "team-b"]
            assert settings.operator.standalone is False
            assert settings.operator.peering_name.startswith("tenantry")


def _api_app() -> Any:
    try:
        from tenantry.api.app import create_app
    except ModuleNotFoundError as error:
        pytest.fail(f"no API app factory (tenantry.api.app.create_app) to check routes: {error}")
    return create_app(Settings(database_url="sqlite+aiosqlite:///:memory:"))


def _served_paths() -> set[str]:
    """The documented paths of the API, and the documentation itself."""
    app = _api_app()
    return {*app.openapi()["paths"], app.openapi_url, app.docs_url}


def _unserved(paths: set[str]) -> set[str]:
    """The paths no route of the API's app answers a GET on."""
    app = _api_app()

    def served(path: str) -> bool:
        scope = {"type": "http", "method": "GET", "path": path, "root_path": "", "app": app}
        return any(route.matches(scope)[0] == Match.FULL for route in app.router.routes)

    return {path for path in paths if not served(path)}


def _public_paths(rendered: Rendered) -> dict[str, str]:
    """`{path: "Prefix" | "Exact"}` of every path the Ingresses and HTTPRoutes route."""
    paths = {
        path["path"]: path["pathType"]
        for ingress in rendered.of_kind("Ingress")
        for rule in ingress["spec"]["rules"]
        for path in rule["http"]["paths"]
    }
    kinds = {"PathPrefix": "Prefix", "Exact": "Exact"}
    paths |= {
        match["path"]["value"]: kinds[match["path"]["type"]]
        for route in rendered.of_kind("HTTPRoute")
        for rule in route["spec"]["rules"]
        for match in rule["matches"]
    }
    return paths


@pytest.mark.parametrize("exposure", ["ingress", "httpRoute"])
def test_every_public_path_leads_to_a_route_of_the_api(chart: Chart, exposure: str) -> None:
    paths = _public_paths(chart.render("--set", f"{exposure}.enabled=true"))
    assert paths == {"/v1": "Prefix", "/openapi.json": "Exact", "/docs": "Prefix"}
    served = _served_paths()
    for path, path_type in paths.items():
        under = [route for route in served if route == path or route.startswith(path + "/")]
        assert under if path_type == "Prefix" else path in served, f"{path} reaches no route"


def test_every_http_probe_and_scrape_path_is_a_route_of_the_api(chart: Chart) -> None:
    prod = chart.values_set("prod")
    api = pod_spec(prod.component("api"))["containers"][0]
    paths = {
        api[probe]["httpGet"]["path"]
        for probe in ("startupProbe", "livenessProbe", "readinessProbe")
    }
    paths |= {e["path"] for e in prod.get("ServiceMonitor", "tenantry-api")["spec"]["endpoints"]}
    assert paths == {"/startupz", "/livez", "/readyz", "/metrics"}
    assert _unserved(paths) == set(), "probe or scrape paths the API does not serve"


# --- the image ----------------------------------------------------------------------------


def test_the_default_image_tag_is_the_projects_version(chart: Chart) -> None:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    image = pod_spec(chart.values_set("minimal").component("api"))["containers"][0]["image"]
    assert image == f"ghcr.io/tenantry/tenantry:{project['version']}"


DOCKERFILE = REPO / "Dockerfile"


def _stages() -> dict[str, list[str]]:
    """Instructions of each Dockerfile stage, continuation lines joined."""
    text = re.sub(r"\\\n\s*", " ", DOCKERFILE.read_text())
    stages: dict[str, list[str]] = {}
    current: list[str] = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        match = re.match(r"FROM\s+\S+\s+AS\s+(\S+)", line, re.IGNORECASE)
        if match:
            current = stages.setdefault(match.group(1), [])
        current.append(line)
    return stages


def test_the_image_user_is_the_charts_run_as_user(chart: Chart) -> None:
    final = list(_stages().values())[-1]
    users = [line.split()[1] for line in final if line.startswith("USER ")]
    assert users, "the final stage sets no USER"
    uid, _, gid = users[-1].partition(":")
    rendered = pod_spec(chart.values_set("minimal").component("api"))["securityContext"]
    assert int(uid) == rendered["runAsUser"]
    assert int(gid) == rendered["runAsGroup"]
    assert any(f"--uid {uid}" in line for line in final), "the user is not created with that uid"


def test_the_image_is_multi_stage_with_no_build_tools_in_the_final_stage() -> None:
    stages = _stages()
    assert len(stages) >= 2
    final = "\n".join(list(stages.values())[-1])
    for tool in ("pip install", "apt-get install", "gcc", "build-essential", "COPY . "):
        assert tool not in final, f"the final stage has `{tool}`"
    assert "COPY --from=build /opt/tenantry /opt/tenantry" in final
    assert 'ENTRYPOINT ["tenantry"]' in final


def test_the_image_installs_the_project_the_way_make_does() -> None:
    build = "\n".join(_stages()["build"])
    makefile = (REPO / "Makefile").read_text()
    for step in ("-m venv", "-m pip install --quiet --upgrade pip"):
        assert step in build, step
        assert step in makefile, step
    assert "python -m pip install --quiet ." in build


def _docker_context_includes(path: str, patterns: list[str]) -> bool:
    """Docker's rule: the last pattern matching the path or one of its parents decides."""
    parts = path.split("/")
    candidates = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    included = True
    for pattern in patterns:
        negate = pattern.startswith("!")
        glob = pattern.removeprefix("!").rstrip("/")
        if any(fnmatch.fnmatchcase(candidate, glob) for candidate in candidates):
            included = negate
    return included


@pytest.mark.parametrize(
    ("path", "included"),
    [
        ("pyproject.toml", True),
        ("README.md", True),
        ("tenantry/cli.py", True),
        ("tenantry/contract/resources.py", True),
        ("tenantry/__pycache__/cli.cpython-311.pyc", False),
        (".venv/bin/python", False),
        (".git/HEAD", False),
        (".tools/bin/helm", False),
        ("tests/conftest.py", False),
        (".tenantry-dev/tenantry.db", False),
        ("charts/tenantry/values.yaml", False),
    ],
)
def test_the_build_context_holds_the_package_only(path: str, included: bool) -> None:
    lines = (REPO / ".dockerignore").read_text().splitlines()
    patterns = [line.strip() for line in lines if line.strip() and not line.startswith("#")]
    assert _docker_context_includes(path, patterns) is included


# --- skaffold -----------------------------------------------------------------------------

SKAFFOLD = yaml.safe_load((REPO / "skaffold.yaml").read_text())


def _pointer_set(document: Any, pointer: str, value: Any, op: str) -> None:
    *parents, last = [part.replace("~1", "/").replace("~0", "~") for part in pointer.split("/")[1:]]
    target = document
    for part in parents:
        target = target[int(part)] if isinstance(target, list) else target[part]
    if isinstance(target, list):
        target[int(last)] = value
    else:
        assert op == "add" or last in target, f"replace of a missing {pointer}"
        target[last] = value


def _profile(name: str) -> dict[str, Any]:
    """skaffold.yaml with the profile's JSON patches applied."""
    config = yaml.safe_load((REPO / "skaffold.yaml").read_text())
    (profile,) = [p for p in config["profiles"] if p["name"] == name]
    for patch in profile.get("patches", []):
        _pointer_set(config, patch["path"], patch["value"], patch["op"])
    return dict(config)


def test_skaffold_uses_the_current_v4beta_schema_and_builds_the_dockerfile() -> None:
    assert re.fullmatch(r"skaffold/v4beta\d+", SKAFFOLD["apiVersion"])
    assert SKAFFOLD["kind"] == "Config"
    (artifact,) = SKAFFOLD["build"]["artifacts"]
    assert (REPO / artifact["docker"]["dockerfile"]).is_file()


@pytest.mark.parametrize("profile", ["dev", "staging", "prod"])
def test_each_skaffold_profile_installs_the_chart_with_the_built_image(
    chart: Chart, profile: str
) -> None:
    config = _profile(profile)
    (artifact,) = config["build"]["artifacts"]
    (release,) = config["deploy"]["helm"]["releases"]
    assert (REPO / release["chartPath"]).resolve() == CHART
    assert [Path(f).name for f in release["valuesFiles"]] == [f"values-{profile}.yaml"]
    built = {
        f"{{{{.IMAGE_REPO_{artifact['image']}}}}}": "registry.example/tenantry",
        f"{{{{.IMAGE_TAG_{artifact['image']}}}}}": "abc123",
        f"{{{{.IMAGE_DIGEST_{artifact['image']}}}}}": "sha256:" + "ab" * 32,
    }
    sets = [f"{key}={built[template]}" for key, template in release["setValueTemplates"].items()]
    files = [arg for f in release["valuesFiles"] for arg in ("-f", str(REPO / f))]
    rendered = chart.render(*files, *[arg for s in sets for arg in ("--set", s)])
    image = pod_spec(rendered.component("api"))["containers"][0]["image"]
    expected = {
        "dev": "registry.example/tenantry:abc123",
        "staging": "registry.example/tenantry@sha256:" + "ab" * 32,
        "prod": "registry.example/tenantry@sha256:" + "ab" * 32,
    }
    assert image == expected[profile]
    assert config["build"]["local"]["push"] is (profile != "dev")


def test_skaffold_forwards_the_rendered_api_service(chart: Chart) -> None:
    (forward,) = SKAFFOLD["portForward"]
    (release,) = SKAFFOLD["deploy"]["helm"]["releases"]
    assert release["name"] == "tenantry"
    assert release["namespace"] == forward["namespace"]
    service = chart.values_set("dev").get("Service", forward["resourceName"])
    assert forward["port"] in {port["port"] for port in service["spec"]["ports"]}
    assert forward["localPort"] == 8000
