"""The widgets plug-in: routes that show what Tenantry does for a plug-in's handlers."""

from __future__ import annotations

import threading
from typing import Annotated

from fastapi import APIRouter, Header
from fastapi.responses import JSONResponse
from pydantic import BaseModel

from tenantry.api import Caller, JobResponse, Jobs, public, requires

router = APIRouter(prefix="/widgets", tags=["widgets"])

released = threading.Event()  # lets `GET /widgets/blocking` return


class Whoami(BaseModel):
    tenant_id: str
    namespace: str
    name: str
    tier: str
    key_name: str
    scopes: list[str] | None
    holds_widgets_write: bool


@router.get("/whoami", dependencies=[requires("widgets:read")], summary="Who is calling")
async def whoami(caller: Caller) -> Whoami:
    return Whoami(
        tenant_id=caller.tenant_id,
        namespace=caller.namespace,
        name=caller.name,
        tier=caller.tier,
        key_name=caller.key_name,
        scopes=sorted(caller.scopes) if caller.scopes is not None else None,
        holds_widgets_write=caller.holds("widgets:write"),
    )


@router.get("/items/{item_id}", dependencies=[requires("widgets:read")])
async def item(item_id: int) -> dict[str, int]:
    return {"item_id": item_id}


@router.post(
    "/reports",
    dependencies=[requires("widgets:write")],
    status_code=202,
    response_model=JobResponse,
)
async def report(
    jobs: Jobs, idempotency_key: Annotated[str, Header(alias="Idempotency-Key")]
) -> JSONResponse:
    submitted = await jobs.submit("noop", {}, idempotency_key=idempotency_key)
    return submitted.response()


@router.get("/boom")
async def boom() -> None:
    raise RuntimeError("the widget store is on fire")


@router.get("/blocking")
def blocking() -> dict[str, bool]:
    """A synchronous handler stuck in blocking I/O until `POST /widgets/release`."""
    was_released = released.wait(timeout=60)
    released.clear()
    return {"released": was_released}


@router.post("/release")
async def release() -> dict[str, bool]:
    released.set()
    return {"released": True}


@router.get("/health", dependencies=[public])
async def health() -> dict[str, str]:
    return {"status": "ok"}
