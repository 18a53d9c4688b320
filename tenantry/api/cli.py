"""`tenantry api`. Heavy imports (FastAPI, uvicorn, the database) happen
inside the commands, so `tenantry --help` stays fast."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated

import typer

from tenantry.settings import get_settings

if TYPE_CHECKING:
    pass


def api_command(
    host: Annotated[str | None, typer.Option(help="Address to bind (default: settings).")] = None,
    port: Annotated[int | None, typer.Option(help="Port to bind (default: settings).")] = None,
) -> None:
    """Serve the API (uvicorn with uvloop and httptools), configured by `TENANTRY_*`, with
    every installed plug-in; one that cannot be mounted stops the start with its error."""
    import uvicorn

    from tenantry.api.app import check_plugins
    from tenantry.api.plugins import PluginError

    try:
        check_plugins()
    except PluginError as error:
        typer.echo(f"error: {error}", err=True)
        raise typer.Exit(1) from error
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
