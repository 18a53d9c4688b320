"""`tenantry api`. Heavy imports (FastAPI, uvicorn, the database) happen
inside the commands, so `tenantry --help` stays fast."""

from __future__ import annotations

import os
from typing import Annotated

import typer

from tenantry.multiprocess_metrics import prepare_multiprocess_dir, single_process
from tenantry.settings import get_settings


def api_command(
    host: Annotated[str | None, typer.Option(help="Address to bind (default: settings).")] = None,
    port: Annotated[int | None, typer.Option(help="Port to bind (default: settings).")] = None,
    check_port: Annotated[
        int | None, typer.Option(help="Port of the gateway check (default: settings).")
    ] = None,
    workers: Annotated[
        int | None, typer.Option(min=1, help="API processes (default: settings).")
    ] = None,
) -> None:
    """Serve the API (uvicorn with uvloop and httptools), configured by `TENANTRY_*`, with
    every installed plug-in, and the gateway check on its own port; a plug-in that cannot be
    mounted stops the start with its error. The options stand for the `TENANTRY_API__*`
    variables of the same names, which every worker process reads.

    With several workers, their metrics meet in `PROMETHEUS_MULTIPROC_DIR` (emptied first; a
    temporary folder when unset), so `/metrics` sums them whichever one answers; with one,
    that variable is ignored and metrics stay in the process's memory."""
    for name, value in (
        ("HOST", host),
        ("PORT", port),
        ("CHECK_PORT", check_port),
        ("WORKERS", workers),
    ):
        if value is not None:
            os.environ[f"TENANTRY_API__{name}"] = str(value)
    get_settings.cache_clear()
    # Before prometheus_client is first imported, here and in every worker process.
    if get_settings().api.workers > 1:
        prepare_multiprocess_dir("tenantry-api-metrics-")
    else:
        single_process()

    from tenantry.api.app import check_plugins
    from tenantry.api.plugins import PluginError
    from tenantry.api.server import serve

    try:
        check_plugins()
    except PluginError as error:
        typer.echo(f"error: {error}", err=True)
        raise typer.Exit(1) from error
    serve("tenantry.api.app:listeners_from_environment", get_settings().api, factory=True)
