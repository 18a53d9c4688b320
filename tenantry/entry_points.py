"""Loading what installed distributions declare in Tenantry's entry-point groups
(`tenantry.apis`, `tenantry.job_kinds`), with errors that name who declared it."""

from __future__ import annotations

from importlib.metadata import EntryPoint
from typing import Any


def distribution_of(point: EntryPoint) -> str:
    """`name version` of the distribution declaring `point`."""
    return f"{point.dist.name} {point.dist.version}" if point.dist else "unknown"


def declared_as(point: EntryPoint, what: str) -> str:
    """How an error names the entry point: `plug-in 'gps' = 'gps.api:router' of the
    distribution tenantry-gps-example 0.1.0`."""
    return f"{what} {point.name!r} = {point.value!r} of the distribution {distribution_of(point)}"


def load_declared(point: EntryPoint, what: str, error: type[Exception]) -> Any:
    """What `point` names; whatever importing it raises becomes `error`, naming the entry
    point, its distribution and the cause."""
    try:
        return point.load()
    except Exception as cause:  # a distribution's import can raise anything; it is re-raised
        raise error(
            f"{declared_as(point, what)} failed to import: {type(cause).__name__}: {cause}"
        ) from cause
