"""Plug-ins: products served behind Tenantry's admission layer.

A distribution declares entry points in the group `tenantry.apis`, each naming a FastAPI
`APIRouter`:

    [project.entry-points."tenantry.apis"]
    gps = "gps_reliability.api:router"

`tenantry api` and `tenantry dev` mount every installed plug-in's router beside Tenantry's
own routes, and the admission layer admits every route of it like Tenantry's own. The API
starts with every plug-in or not at all: one that fails to import, that is not a router, or
whose routes collide with another's (or sit under Tenantry's own paths) stops the start-up
with an error naming the owners.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from importlib.metadata import EntryPoint, entry_points
from typing import Any

from fastapi import APIRouter, FastAPI

from tenantry.api.routes import RouteTableError, http_routes
from tenantry.contract.resources import route_shape
from tenantry.entry_points import declared_as, distribution_of, load_declared

ENTRY_POINT_GROUP = "tenantry.apis"
TENANTRY = "Tenantry"  # how errors name the owner of Tenantry's own routes


class PluginError(RuntimeError):
    """Plug-ins the API cannot start with; the message names each plug-in at fault."""


@dataclass(frozen=True)
class Plugin:
    """One plug-in: its entry point's name, its router, and the distribution declaring it."""

    name: str
    router: APIRouter
    distribution: str = "not installed"

    @property
    def description(self) -> str:
        """How errors name the plug-in (its routes' owner in the route table is `name`)."""
        return f"plug-in {self.name!r} ({self.distribution})"


def discover_plugins() -> tuple[Plugin, ...]:
    """Every plug-in installed in this environment, by entry-point name; a plug-in that cannot
    be loaded is a `PluginError` naming its distribution, its entry point and the error."""
    points = sorted(entry_points(group=ENTRY_POINT_GROUP), key=lambda point: point.name)
    plugins = [_load(point) for point in points]
    seen: dict[str, Plugin] = {}
    for plugin in plugins:
        earlier = seen.setdefault(plugin.name, plugin)
        if earlier is not plugin:
            raise PluginError(
                f"two plug-ins are named {plugin.name!r}: {earlier.description} and "
                f"{plugin.description}"
            )
    return tuple(plugins)


def _load(point: EntryPoint) -> Plugin:
    router = load_declared(point, "plug-in", PluginError)
    if not isinstance(router, APIRouter):
        raise PluginError(
            f"{declared_as(point, 'plug-in')} names a {type(router).__name__}, "
            "not a FastAPI APIRouter"
        )
    return Plugin(point.name, router, distribution_of(point))


def mount_plugins(app: FastAPI, plugins: Sequence[Plugin]) -> dict[Callable[..., Any], str]:
    """Include every plug-in's router in `app`, whose routes so far are Tenantry's own, once
    none collides with another or sits under a path of Tenantry's. Returns the owning
    plug-in's name of each plug-in endpoint."""
    taken: dict[tuple[str, str], str] = {}
    reserved: set[str] = set()
    for route in http_routes(app.routes):
        reserved.add(_static_prefix(route.path_format))
        for method in route.methods:
            taken[(method, route_shape(route.path_format))] = TENANTRY
    collisions: list[str] = []
    owners: dict[Callable[..., Any], str] = {}
    for plugin in plugins:
        for route in _routes_of(plugin):
            path: str = route.path_format
            under = sorted(
                prefix for prefix in reserved if path == prefix or path.startswith(prefix + "/")
            )
            if under:
                collisions.append(
                    f"{plugin.description} declares {path!r}, under {TENANTRY}'s own {under[0]!r}"
                )
            for method in sorted(route.methods):
                owner = taken.setdefault((method, route_shape(path)), plugin.description)
                if owner != plugin.description:
                    collisions.append(
                        f"{method} {path} is declared by {owner} and {plugin.description}"
                    )
            owners[route.endpoint] = plugin.name
    if collisions:
        raise PluginError("plug-in routes collide:\n  " + "\n  ".join(collisions))
    for plugin in plugins:
        app.include_router(plugin.router)
    return owners


def _routes_of(plugin: Plugin) -> Iterable[Any]:
    try:
        return list(http_routes(plugin.router.routes))
    except RouteTableError as error:
        raise PluginError(f"{plugin.description}: {error}") from error


def _static_prefix(path: str) -> str:
    """The fixed part of a template (`/v1/jobs/{job_id}/result` → `/v1/jobs`)."""
    return path.split("{", 1)[0].rstrip("/") or path
