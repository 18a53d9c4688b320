"""`tenantry dev`: the whole platform in one process, composed here and only here.

The API (with every installed plug-in), the in-process job worker (`tenantry.worker.inprocess`:
jobs, the outbox sweep, idempotency trimming, and the usage flush when Redis is configured)
and the file registry source run on one event loop, on SQLite unless a database is
configured. The services never import each other; this module is where they meet.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from tenantry.contract.policy import route_name
from tenantry.settings import ApiSettings, Settings, get_settings

if TYPE_CHECKING:
    from fastapi import FastAPI

    from tenantry.api.plugins import Plugin
    from tenantry.api.runtime import ApiRuntime
    from tenantry.contract.issuance import KeySecretState
    from tenantry.contract.registry import Registry, TenantEntry
    from tenantry.jobs.service import JobsService
    from tenantry.sources import RegistrySource


def create_dev_app(
    settings: Settings,
    *,
    source: RegistrySource,
    plugins: Sequence[Plugin] | None = None,
) -> FastAPI:
    """The API app with jobs running inside it; `plugins` replace the installed ones."""
    from tenantry.api.app import create_app

    return create_app(settings, source=source, plugins=plugins, jobs_in_process=_jobs_beside)


@asynccontextmanager
async def _jobs_beside(runtime: ApiRuntime) -> AsyncIterator[JobsService]:
    """The in-process worker, for as long as the API serves, and the service feeding it."""
    from tenantry.db.engine import session_factory
    from tenantry.jobs.breaker import CircuitBreakers
    from tenantry.jobs.kinds import JobKinds
    from tenantry.jobs.service import JobsService
    from tenantry.worker.execution import WorkerContext
    from tenantry.worker.flush import UsageFlusher
    from tenantry.worker.inprocess import InProcessQueue, InProcessWorker

    if runtime.engine is None:
        raise ValueError("jobs need a database: set TENANTRY_DATABASE_URL")
    settings = runtime.settings.worker
    sessions = session_factory(runtime.engine)
    kinds = JobKinds.discover()
    queue = InProcessQueue()
    context = WorkerContext(
        settings=settings,
        sessions=sessions,
        kinds=kinds,
        registry=runtime.holder,
        publisher=queue,
        breakers=CircuitBreakers(
            settings.breaker_failure_threshold, settings.breaker_cooldown_seconds
        ),
    )
    periodic: dict[str, tuple[float, Callable[[], Awaitable[object]]]] = {}
    redis = runtime.redis
    if redis is not None:
        flusher = UsageFlusher(redis, sessions, grace_seconds=settings.usage_flush_grace_seconds)

        async def flush() -> object:
            return await flusher.flush(runtime.holder.registry.tenants.values())

        periodic["usage-flush"] = (settings.usage_flush_interval_seconds, flush)
    worker = InProcessWorker(context, queue, periodic=periodic)
    async with worker.running():
        yield JobsService(sessions, kinds, queue, settings)


def dev_command(
    manifests: Annotated[
        list[Path] | None, typer.Option(help="Manifest files or folders to serve.")
    ] = None,
    port: Annotated[int | None, typer.Option(help="Port to serve on.")] = None,
    check_port: Annotated[
        int | None, typer.Option(help="Port to serve the gateway check on.")
    ] = None,
) -> None:
    """Run the platform on one machine: the API with every installed plug-in on SQLite, the
    in-process limiter and worker, tenants from examples/, and a demo key to try it with."""
    from tenantry.api.app import check_plugins
    from tenantry.api.plugins import PluginError
    from tenantry.api.server import Listeners, serve
    from tenantry.contract.manifests import ManifestError
    from tenantry.contract.registry import RegistryError
    from tenantry.db.migrate import upgrade
    from tenantry.logs import configure_logging
    from tenantry.sources.files import source_from_settings

    settings = get_settings()
    if manifests:
        settings = settings.model_copy(
            update={"registry": settings.registry.model_copy(update={"manifests": manifests})}
        )
    ports = {name: value for name, value in (("port", port), ("check_port", check_port)) if value}
    if ports:
        api = ApiSettings.model_validate(settings.api.model_dump() | ports)
        settings = settings.model_copy(update={"api": api})
    configure_logging(settings.log_level, settings.log_format)
    source = source_from_settings(settings)
    try:
        plugins = check_plugins()
        reconciled = source.reconcile()
    except (ManifestError, RegistryError, PluginError) as error:
        problems = error.problems if isinstance(error, ManifestError) else [str(error)]
        for problem in problems:
            typer.echo(f"error: {problem}", err=True)
        raise typer.Exit(1) from error
    upgrade(settings.database_url)
    app = create_dev_app(settings, source=source, plugins=plugins)
    _print_welcome(settings, reconciled.registry, reconciled.keys, app)
    serve(Listeners(app), settings.api.model_copy(update={"workers": 1}))


def _print_welcome(
    settings: Settings, registry: Registry, keys: Mapping[str, KeySecretState], app: FastAPI
) -> None:
    url = f"http://{settings.api.host}:{settings.api.port}"
    typer.echo(f"Tenantry dev: the API on {url} (OpenAPI docs at {url}/docs)")
    from sqlalchemy.engine import make_url

    limiter = "in Redis (TENANTRY_REDIS_URL)" if settings.redis_url else "in process (no Redis)"
    database = make_url(settings.database_url).render_as_string(hide_password=True)
    typer.echo(f"Database {database}; limiter {limiter}.")
    plugin_routes = _plugin_operations(app.openapi())
    for owner, operations in sorted(plugin_routes.items()):
        names = ", ".join(operation.name for operation in operations)
        typer.echo(f"Plug-in {owner}: {names}")
    _print_gateway_check(settings, registry)
    typer.echo(f"Tenants from {', '.join(str(p) for p in settings.registry.manifests)}:")
    demo: tuple[int, TenantEntry, str] | None = None
    for tenant_id, entry in sorted(registry.tenants.items()):
        limits = entry.limits
        assert limits is not None  # the file source refuses unknown tiers
        rate = f"{limits.requests_per_minute}/min" if limits.requests_per_minute else "unlimited"
        quota = f"{limits.monthly_quota}/month" if limits.monthly_quota else "no quota"
        state = "suspended" if entry.suspended else "active"
        names = ", ".join(sorted({key.name for key in entry.keys})) or "no keys"
        typer.echo(
            f"  {tenant_id:<18} tier={entry.tier:<11} {state:<9} rate={rate} "
            f"burst={limits.burst} {quota} keys: {names}"
        )
        state_of = keys.get(tenant_id)
        if entry.suspended or limits.requests_per_minute is None or state_of is None:
            continue
        for key in entry.keys:
            if key.scopes is None and key.name in state_of.keys and key.expires_at is None:
                candidate = (limits.burst, entry, state_of.keys[key.name].plaintext)
                if demo is None or candidate[0] < demo[0]:
                    demo = candidate
                break
    typer.echo(f"Issued keys are kept in {settings.registry.keys_file}.")
    if demo is None:
        return
    burst, tenant, plaintext = demo
    header = f'-H "Authorization: Bearer {plaintext}"'
    typer.echo(f"\nDemo key of {tenant.tenant_id} (burst {burst}):\n  {plaintext}\n")
    typer.echo("See the rate-limit headers:")
    typer.echo(f"  curl -i {header} {url}/v1/limits\n")
    typer.echo(f"Spend the burst; request {burst + 2} answers 429 with Retry-After:")
    typer.echo(f"  {_curl_loop(burst + 2, header, f'{url}/v1/limits')}\n")
    demo_route = _demo_operation(plugin_routes, tenant)
    if demo_route is not None:
        _print_plugin_demo(demo_route, tenant, header, url)
    today = datetime.now(UTC).date()
    export = json.dumps(
        {"kind": "usage.export", "payload": {"start": str(today.replace(day=1)), "end": str(today)}}
    )
    typer.echo("Submit a job (it runs in this process), then read its status and result:")
    typer.echo(
        f"  curl -s -X POST {header} -H 'Idempotency-Key: demo-1' "
        f"-H 'Content-Type: application/json' -d '{export}' {url}/v1/jobs"
    )
    typer.echo(f"  curl -s {header} {url}/v1/jobs/<id>/result")


CADDYFILE = Path("examples/gateways/Caddyfile")  # the tested configuration, in the repository


def _caddyfile() -> Path:
    """The shipped Caddyfile: under the working folder, or beside the package (a checkout)."""
    for root in (Path.cwd(), Path(__file__).resolve().parents[1]):
        if (root / CADDYFILE).exists():
            return root / CADDYFILE
    return CADDYFILE


def _print_gateway_check(settings: Settings, registry: Registry) -> None:
    """Where the gateway check listens, the products' routes it admits, and the Caddy command
    that puts a local service behind it."""
    check_port = settings.api.check_port
    if check_port is None:
        return
    check = f"{settings.api.host}:{check_port}"
    typer.echo(f"Gateway check on http://{check}/authz/ (any other path: the tenant's own limit)")
    for name, product in sorted(registry.products.items()):
        routes = ", ".join(
            f"{route.method.value} {route.path}"
            + (" (public)" if route.public else "")
            + (f" [{' '.join(route.scopes)}]" if route.scopes else "")
            for route in product.routes
        )
        typer.echo(f"  product {name}: {routes}")
    typer.echo("  Put a service on 127.0.0.1:9000 behind it, on http://127.0.0.1:8090 (Caddy):")
    typer.echo(
        f"  TENANTRY_CHECK_ADDRESS={check} UPSTREAM_ADDRESS=127.0.0.1:9000 GATEWAY_PORT=8090 "
        f"GATEWAY_BIND=127.0.0.1 CADDY_ADMIN=off caddy run --adapter caddyfile "
        f"--config {_caddyfile()}"
    )
    typer.echo(
        "  (nginx: examples/gateways/nginx; Envoy Gateway, Istio, Traefik: docs/gateways.md)"
    )


@dataclass(frozen=True)
class _PluginOperation:
    """A plug-in's operation as the OpenAPI document describes it. `body` is what a demo
    call sends: the first example of its JSON body, `None` for a protected GET without path
    parameters; the operation has no demo when `demo` is False."""

    method: str
    path: str
    body: Any | None
    demo: bool

    @property
    def name(self) -> str:
        return f"{self.method} {self.path}"


def _plugin_operations(document: Mapping[str, Any]) -> dict[str, list[_PluginOperation]]:
    """Each plug-in's operations, by plug-in."""
    found: dict[str, list[_PluginOperation]] = {}
    schemas = document.get("components", {}).get("schemas", {})
    for path, methods in document["paths"].items():
        for method, operation in methods.items():
            owner = operation.get("x-tenantry-plugin")
            if owner is None:
                continue
            body: Any | None = None
            demo = bool(operation.get("security")) and "{" not in path
            content = operation.get("requestBody", {}).get("content", {})
            if "application/json" in content:
                schema = content["application/json"].get("schema", {})
                schema = schemas.get(schema.get("$ref", "").rpartition("/")[2], schema)
                body = (schema.get("examples") or [None])[0]
                demo = demo and body is not None
            operation_of = _PluginOperation(method.upper(), path, body, demo)
            found.setdefault(owner, []).append(operation_of)
    return found


def _demo_operation(
    plugin_routes: Mapping[str, list[_PluginOperation]], tenant: TenantEntry
) -> _PluginOperation | None:
    """A plug-in operation to call in the demo: one the tenant's tier limits on its own,
    else the first that can be called."""
    assert tenant.limits is not None
    overridden = {route_name(route.method.value, route.path) for route in tenant.limits.routes}
    candidates = [op for ops in plugin_routes.values() for op in ops if op.demo]
    for operation in candidates:
        if operation.name in overridden:
            return operation
    return candidates[0] if candidates else None


def _print_plugin_demo(
    operation: _PluginOperation, tenant: TenantEntry, header: str, url: str
) -> None:
    limits = tenant.limits
    assert limits is not None
    override = next(
        (r for r in limits.routes if route_name(r.method.value, r.path) == operation.name), None
    )
    burst = override.burst if override is not None else limits.burst
    arguments = f"-X {operation.method} {header}"
    if operation.body is not None:
        body = json.dumps(operation.body)
        arguments += f" -H 'Content-Type: application/json' -d '{body}'"
    target = f"{url}{operation.path}"
    typer.echo(f"Call the plug-in's {operation.name} (burst {burst} in this tier):")
    typer.echo(f"  curl -s {arguments} {target}")
    typer.echo(f"Spend its burst; request {burst + 2} answers 429 (sooner after the call above):")
    typer.echo(f"  {_curl_loop(burst + 2, arguments, target)}\n")


def _curl_loop(times: int, arguments: str, target: str) -> str:
    return (
        f"for i in $(seq {times}); do curl -s -o /dev/null -w '%{{http_code}} ' "
        f"{arguments} {target}; done; echo"
    )
