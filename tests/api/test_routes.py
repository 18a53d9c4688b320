"""The route table: compiled once from an app's routes, matched by template, with the
declarations routes make to the admission layer."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest
from fastapi import APIRouter, FastAPI, WebSocket
from fastapi.staticfiles import StaticFiles

from tenantry.api.context import Caller
from tenantry.api.routes import RouteTable, RouteTableError, public, requires
from tenantry.api.versioning import deprecation


async def _ok() -> dict[str, bool]:
    return {"ok": True}


def _table(app: FastAPI) -> RouteTable:
    return RouteTable.compile(app.routes, public_paths={"/openapi.json", "/docs"})


def _app() -> FastAPI:
    app = FastAPI()
    jobs = APIRouter(prefix="/v1/jobs", dependencies=[requires("jobs:read")])
    jobs.add_api_route("/{job_id}", _ok, methods=["GET"])
    jobs.add_api_route("/{job_id}", _ok, methods=["DELETE"])
    jobs.add_api_route("", _ok, methods=["POST"], dependencies=[requires("jobs:write")])
    app.include_router(jobs)
    app.add_api_route("/items/{item_id:int}", _ok, methods=["GET"])
    app.add_api_route("/items/latest", _ok, methods=["GET", "PUT"])
    app.add_api_route("/livez", _ok, dependencies=[public])
    return app


def test_requests_to_different_ids_share_one_template_entry() -> None:
    table = _table(_app())
    first, second = table.match("GET", "/v1/jobs/123"), table.match("GET", "/v1/jobs/456")
    assert first.entry is not None
    assert first.entry is second.entry
    assert first.entry.name == "GET /v1/jobs/{job_id}"
    assert (first.path_params, second.path_params) == ({"job_id": "123"}, {"job_id": "456"})


def test_path_parameters_are_converted_by_their_declared_type() -> None:
    found = _table(_app()).match("GET", "/items/7")
    assert found.entry is not None
    assert found.path_params == {"item_id": 7}


@pytest.mark.parametrize(
    ("method", "path", "template"),
    [
        ("GET", "/items/latest", "/items/latest"),  # not an int: the earlier template passes
        ("PUT", "/items/latest", "/items/latest"),
        ("GET", "/items/12", "/items/{item_id}"),
    ],
)
def test_routes_match_in_the_order_they_were_declared(
    method: str, path: str, template: str
) -> None:
    found = _table(_app()).match(method, path)
    assert found.entry is not None
    assert found.entry.template == template


def test_an_earlier_template_wins_over_a_later_static_path_as_in_starlette() -> None:
    app = FastAPI()
    app.add_api_route("/files/{name}", _ok, methods=["GET"])
    app.add_api_route("/files/index", _ok, methods=["GET", "POST"])
    table = _table(app)
    shadowed = table.match("GET", "/files/index")
    assert shadowed.entry is not None
    assert shadowed.entry.template == "/files/{name}"
    assert shadowed.path_params == {"name": "index"}
    posted = table.match("POST", "/files/index")
    assert posted.entry is not None
    assert posted.entry.template == "/files/index"


@pytest.mark.parametrize(
    ("method", "path", "allowed"),
    [
        ("PUT", "/v1/jobs/9", ("DELETE", "GET")),  # two routes share the template
        ("GET", "/v1/jobs", ("POST",)),
        ("GET", "/nowhere", ()),
    ],
)
def test_a_miss_says_which_methods_the_path_has(
    method: str, path: str, allowed: tuple[str, ...]
) -> None:
    found = _table(_app()).match(method, path)
    assert found.entry is None
    assert found.allowed == allowed


def test_declarations_add_up_from_the_router_and_the_route() -> None:
    table = _table(_app())
    submit = table.match("POST", "/v1/jobs").entry
    read = table.match("GET", "/v1/jobs/1").entry
    assert submit is not None
    assert read is not None
    assert submit.scopes == {"jobs:read", "jobs:write"}
    assert read.scopes == {"jobs:read"}
    assert not submit.public


def test_public_routes_are_those_declared_public_and_the_documentation() -> None:
    table = _table(_app())
    public_names = {entry.name for entry in table.entries if entry.public}
    assert public_names == {"GET /livez", "GET /openapi.json", "HEAD /openapi.json"} | {
        "GET /docs",
        "HEAD /docs",
    }
    redirect = table.match("GET", "/docs/oauth2-redirect").entry
    assert redirect is not None
    assert not redirect.public  # not listed: protected like any other route


def test_a_deprecated_route_carries_its_headers() -> None:
    since = datetime(2026, 12, 1, tzinfo=UTC)
    app = FastAPI()
    app.add_api_route(
        "/v1/old",
        _ok,
        dependencies=[deprecation(since=since, sunset=datetime(2027, 6, 1, tzinfo=UTC))],
    )
    entry = _table(app).match("GET", "/v1/old").entry
    assert entry is not None
    assert dict(entry.headers) == {
        b"deprecation": b"@%d" % since.timestamp(),
        b"sunset": b"Tue, 01 Jun 2027 00:00:00 GMT",
    }


def test_a_public_route_that_takes_the_caller_is_refused() -> None:
    async def whoami(caller: Caller) -> dict[str, str]:
        return {"tenant": caller.tenant.tenant_id}

    app = FastAPI()
    app.add_api_route("/whoami", whoami, dependencies=[public])
    with pytest.raises(RouteTableError, match="'/whoami' is public"):
        _table(app)


def test_routes_the_layer_cannot_stand_in_front_of_are_refused_by_name(tmp_path: Any) -> None:
    sockets = FastAPI()

    @sockets.websocket("/v1/stream")
    async def stream(websocket: WebSocket) -> None:
        await websocket.close()

    with pytest.raises(RouteTableError, match="websocket route '/v1/stream'"):
        _table(sockets)
    mounted = FastAPI()
    mounted.mount("/static", StaticFiles(directory=tmp_path))
    with pytest.raises(RouteTableError, match="Mount '/static'"):
        _table(mounted)


def test_routes_on_one_path_with_different_parameter_types_stay_apart() -> None:
    app = FastAPI()
    app.add_api_route("/items/{item_id:int}", _ok, methods=["GET"])
    app.add_api_route("/items/{item_id}", _ok, methods=["DELETE"])
    table = _table(app)
    by_number = table.match("GET", "/items/5")
    assert by_number.entry is not None
    assert by_number.path_params == {"item_id": 5}
    by_name = table.match("GET", "/items/five")
    assert by_name.entry is None
    assert by_name.allowed == ("DELETE",)


@pytest.mark.parametrize(
    ("scope", "complaint"),
    [
        ("Reports Read", "not `resource:action` in lower case"),
        ("a:b:c", "not `resource:action` in lower case"),
        ("reports", "not `resource:action` in lower case"),
        ("reports:" + "r" * 292, "longer than 64 characters"),
    ],
)
def test_a_malformed_scope_is_refused_where_the_route_declares_it(
    scope: str, complaint: str
) -> None:
    with pytest.raises(ValueError, match=complaint):
        requires(scope)


def test_scopes_are_open_ended_resource_actions() -> None:
    app = FastAPI()
    app.add_api_route("/reports", _ok, methods=["POST"], dependencies=[requires("reports:write")])
    entry = _table(app).match("POST", "/reports").entry
    assert entry is not None
    assert entry.scopes == {"reports:write"}
