"""`tenantry operator`: the Kopf operator with its liveness endpoint and metrics.

Kopf and the Kubernetes client are imported inside the command so that `tenantry --help`
and the other subcommands stay fast.
"""

from __future__ import annotations

import asyncio

import typer

from tenantry.logs import configure_logging
from tenantry.settings import get_settings


def operator_command() -> None:
    """Reconcile ApiTenants, RateLimitPolicies and the ApiPlatform (runs until stopped).

    Watches the namespaces in TENANTRY_OPERATOR__NAMESPACES (all when empty); peering keeps
    one active instance per TENANTRY_OPERATOR__PEERING_NAME.
    """
    from prometheus_client import start_http_server

    from tenantry.operator.run import run_operator

    settings = get_settings()
    configure_logging(settings.log_level, settings.log_format)
    start_http_server(settings.operator.metrics_port)
    typer.echo(
        f"operator: namespaces={','.join(settings.operator.namespaces) or 'all'} "
        f"platform={settings.platform_namespace} metrics=:{settings.operator.metrics_port}",
        err=True,
    )
    asyncio.run(run_operator(settings, liveness_endpoint=settings.operator.liveness_endpoint))
