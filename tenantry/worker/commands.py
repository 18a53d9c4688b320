"""`tenantry worker`, `tenantry worker probe live|ready`, `tenantry beat`, `tenantry audit`.

Celery is imported inside the commands, so `tenantry --help` stays fast.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Annotated

import typer

from tenantry.multiprocess_metrics import prepare_multiprocess_dir
from tenantry.settings import Settings, get_settings

if TYPE_CHECKING:
    from celery import Celery

worker_app = typer.Typer(
    help="Run the Celery worker (jobs, usage flush, housekeeping), or probe it.",
    invoke_without_command=True,
    no_args_is_help=False,
)
probe_app = typer.Typer(help="Exec probes for Kubernetes: exit 0 when healthy.")
worker_app.add_typer(probe_app, name="probe")
audit_app = typer.Typer(help="The audit trail.", no_args_is_help=True)


@worker_app.callback()
def worker(
    context: typer.Context,
    concurrency: Annotated[
        int | None, typer.Option(help="Worker processes (default: worker.concurrency).")
    ] = None,
    queues: Annotated[
        str | None, typer.Option(help="Comma-separated queues (default: all, by priority).")
    ] = None,
    embed_beat: Annotated[
        bool,
        typer.Option(
            "--beat", help="Also run beat in this worker (one such worker per installation)."
        ),
    ] = False,
) -> None:
    """Run the worker until SIGTERM."""
    if context.invoked_subcommand is not None:
        return
    # Before prometheus_client is imported: prefork children write metrics to files the main
    # process serves together.
    prepare_multiprocess_dir("tenantry-worker-metrics-")
    from prometheus_client import CollectorRegistry, start_http_server
    from prometheus_client.multiprocess import MultiProcessCollector

    from tenantry.jobs.broker import broker_queues

    settings = get_settings()
    app = _celery_app(settings)
    registry = CollectorRegistry()
    MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
    start_http_server(settings.worker.metrics_port, registry=registry)
    app.worker_main(
        [
            "worker",
            f"--loglevel={settings.log_level.upper()}",
            f"--concurrency={concurrency or settings.worker.concurrency}",
            f"--queues={queues or ','.join(broker_queues(settings).consumed)}",
            "--pool=prefork",
            "--without-gossip",
            "--without-mingle",
            "--hostname=tenantry@%h",
            *(["--beat", f"--schedule={settings.worker.beat_schedule_file}"] if embed_beat else []),
        ]
    )


@probe_app.command("live")
def probe_live() -> None:
    """Alive: the worker's timer refreshed the heartbeat file recently."""
    from tenantry.worker.probes import check_live

    worker = get_settings().worker
    _answer(*check_live(worker.heartbeat_file, worker.heartbeat_max_age_seconds))


@probe_app.command("ready")
def probe_ready() -> None:
    """Ready: alive, and the broker answers."""
    from tenantry.jobs.broker import broker_url
    from tenantry.worker.probes import check_broker, check_live

    settings = get_settings()
    worker = settings.worker
    _answer(*check_live(worker.heartbeat_file, worker.heartbeat_max_age_seconds))
    try:
        url = broker_url(settings)
    except ValueError as error:
        _answer(False, str(error))
        raise
    _answer(*check_broker(url))


def _celery_app(settings: Settings) -> Celery:
    """Logging set up, and the Celery app, or exit 2 saying which setting is wrong."""
    from tenantry.logs import configure_logging
    from tenantry.worker.celery_app import create_celery

    configure_logging(settings.log_level, settings.log_format)
    try:
        return create_celery(settings)
    except ValueError as error:
        typer.echo(f"error: {error}", err=True)
        raise typer.Exit(2) from error


def _answer(ok: bool, detail: str) -> None:
    """Exit 1 with the reason when failing; print `ok` only at the end of all checks."""
    if not ok:
        typer.echo(f"failing: {detail}", err=True)
        raise typer.Exit(1)
    typer.echo(f"ok: {detail}")


def beat() -> None:
    """Run Celery beat: usage flush, outbox sweep and idempotency trimming on schedule."""
    settings = get_settings()
    app = _celery_app(settings)
    app.start(
        [
            "beat",
            f"--loglevel={settings.log_level.upper()}",
            f"--schedule={settings.worker.beat_schedule_file}",
        ]
    )


@audit_app.command("verify")
def audit_verify() -> None:
    """Check the audit trail's hash chain; exit 1 naming the first row that fails."""
    from tenantry.audit import ChainReport, verify_chain
    from tenantry.db.engine import create_engine, session_factory

    async def check() -> ChainReport:
        engine = create_engine(get_settings().database_url)
        try:
            async with session_factory(engine)() as session:
                return await verify_chain(session)
        finally:
            await engine.dispose()

    report = asyncio.run(check())
    if report.intact:
        typer.echo(f"ok: {report.rows} audit rows, chain intact")
        return
    typer.echo(
        f"broken: row {report.broken_at}: {report.reason} ({report.rows} rows verified before it)",
        err=True,
    )
    raise typer.Exit(1)
