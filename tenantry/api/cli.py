"""`tenantry api` and `tenantry dev`. Heavy imports (FastAPI, uvicorn, the database) happen
inside the commands, so `tenantry --help` stays fast."""

from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from tenantry.settings import Settings, get_settings

if TYPE_CHECKING:
    from tenantry.contract.issuance import KeySecretState
    from tenantry.contract.registry import Registry


def api_command(
    host: Annotated[str | None, typer.Option(help="Address to bind (default: settings).")] = None,
    port: Annotated[int | None, typer.Option(help="Port to bind (default: settings).")] = None,
) -> None:
    """Serve the API (uvicorn with uvloop and httptools), configured by `TENANTRY_*`."""
    import uvicorn

    settings = get_settings()
    api = settings.api
    uvicorn.run(
        "tenantry.api.app:app_from_environment",
        factory=True,
        host=host or api.host,
        port=port or api.port,
        workers=api.workers,
        loop="uvloop",
        http="httptools",
        timeout_keep_alive=api.keepalive_seconds,
        timeout_graceful_shutdown=api.graceful_shutdown_seconds,
        limit_max_requests=api.limit_max_requests,
        log_config=None,
        access_log=False,  # the API writes its own JSON access log, without key material
        proxy_headers=False,  # X-Forwarded-For is read only from `api.trusted_proxies`
        server_header=False,
    )


def dev_command(
    manifests: Annotated[
        list[Path] | None, typer.Option(help="Manifest files or folders to serve.")
    ] = None,
    port: Annotated[int | None, typer.Option(help="Port to serve on.")] = None,
) -> None:
    """Run the platform on one machine: the API on SQLite, the in-process limiter, tenants
    from examples/, and a demo key to try it with."""
    import uvicorn

    from tenantry.api.app import create_app
    from tenantry.contract.manifests import ManifestError
    from tenantry.contract.registry import RegistryError
    from tenantry.db.migrate import upgrade
    from tenantry.logs import configure_logging
    from tenantry.sources.files import source_from_settings
    from tenantry.worker.inprocess import install_dev_jobs

    settings = get_settings()
    if manifests:
        settings = settings.model_copy(
            update={"registry": settings.registry.model_copy(update={"manifests": manifests})}
        )
    if port:
        settings = settings.model_copy(
            update={"api": settings.api.model_copy(update={"port": port})}
        )
    configure_logging(settings.log_level, settings.log_format)
    source = source_from_settings(settings)
    try:
        reconciled = source.reconcile()
    except (ManifestError, RegistryError) as error:
        problems = error.problems if isinstance(error, ManifestError) else [str(error)]
        for problem in problems:
            typer.echo(f"error: {problem}", err=True)
        raise typer.Exit(1) from error
    upgrade(settings.database_url)
    _print_welcome(settings, reconciled.registry, reconciled.keys)
    app = create_app(settings, source=source)
    install_dev_jobs(app)  # jobs, the outbox and housekeeping run in this process
    uvicorn.run(
        app,
        host=settings.api.host,
        port=settings.api.port,
        loop="uvloop",
        http="httptools",
        log_config=None,
        access_log=False,
        server_header=False,
    )


def _print_welcome(
    settings: Settings, registry: Registry, keys: Mapping[str, KeySecretState]
) -> None:
    url = f"http://{settings.api.host}:{settings.api.port}"
    typer.echo(f"Tenantry dev: the API on {url} (OpenAPI docs at {url}/docs)")
    from sqlalchemy.engine import make_url

    limiter = "in Redis (TENANTRY_REDIS_URL)" if settings.redis_url else "in process (no Redis)"
    database = make_url(settings.database_url).render_as_string(hide_password=True)
    typer.echo(f"Database {database}; limiter {limiter}.")
    typer.echo(f"Tenants from {', '.join(str(p) for p in settings.registry.manifests)}:")
    demo: tuple[int, str, str] | None = None
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
                candidate = (limits.burst, tenant_id, state_of.keys[key.name].plaintext)
                if demo is None or candidate[0] < demo[0]:
                    demo = candidate
                break
    typer.echo(f"Issued keys are kept in {settings.registry.keys_file}.")
    if demo is None:
        return
    burst, tenant_id, plaintext = demo
    header = f'-H "Authorization: Bearer {plaintext}"'
    typer.echo(f"\nDemo key of {tenant_id} (burst {burst}):\n  {plaintext}\n")
    typer.echo("See the rate-limit headers:")
    typer.echo(f"  curl -i {header} {url}/v1/limits\n")
    typer.echo(f"Spend the burst; request {burst + 2} answers 429 with Retry-After:")
    typer.echo(
        f"  for i in $(seq {burst + 2}); do curl -s -o /dev/null -w '%{{http_code}} ' "
        f"{header} {url}/v1/limits; done; echo\n"
    )
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
