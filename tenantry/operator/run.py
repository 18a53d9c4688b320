"""Starting the operator: `tenantry operator` in a pod, `run_operator` in tests and benchmarks."""

from __future__ import annotations

import asyncio
import threading

import kopf

from tenantry.operator.handlers import build_registry, kopf_settings, memo_for
from tenantry.settings import Settings


async def run_operator(
    settings: Settings,
    *,
    liveness_endpoint: str | None = None,
    stop_flag: asyncio.Event | threading.Event | None = None,
    ready_flag: asyncio.Event | threading.Event | None = None,
) -> None:
    """Run until `stop_flag` is set (or forever), watching the configured namespaces.

    Tenants may live in any watched namespace; the registry, policies and the platform live
    in the platform namespace, which is always watched.
    """
    watched = settings.operator.namespaces
    namespaces = sorted({*watched, settings.platform_namespace}) if watched else []
    await kopf.operator(
        registry=build_registry(),
        settings=kopf_settings(settings),
        memo=memo_for(settings),
        clusterwide=not namespaces,
        namespaces=namespaces,
        liveness_endpoint=liveness_endpoint,
        stop_flag=stop_flag,
        ready_flag=ready_flag,
    )
