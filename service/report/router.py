"""HTTP routes for reports (reader role and up).

The routes are coroutines that run the (sync, database-bound) service call in the thread
pool themselves: FastAPI would otherwise take a second trip through the pool to validate
the response of a plain `def` route.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Annotated, Any, TypeVar

import orjson
from fastapi import APIRouter, Query, Request, Response
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool

from blindmap import binary_pages, protocol
from service.auth import ReaderKey
from service.db import SessionDep, finish
from service.report import service

T = TypeVar("T")


def _in_one_trip(fn: Callable[..., T], session: Session, *args: Any, **kwargs: Any) -> T:
    """The service call and the commit of the request's unit of work, in the same
    thread-pool trip (service.db.get_session then has nothing left to do)."""
    out = fn(session, *args, **kwargs)
    finish(session)
    return out


router = APIRouter(prefix="/v1/partnerships/{partnership_id}", tags=["reports"])
# Up to 10 000 records per overlaps or white-space page: a bulk export (the whole report,
# page by page) then pays the per-request cost (HTTP, context read, release) once per 10k
# records instead of once per 1000. A larger limit is refused (422 naming `limit`).
MAX_REPORT_PAGE = protocol.MAX_REPORT_PAGE
Limit = Annotated[
    int, Query(ge=1, le=MAX_REPORT_PAGE, description="records per page (at most 10 000)")
]


@router.get("/reports/summary", response_model=protocol.SummaryReport)
async def summary_report(
    partnership_id: uuid.UUID, request: Request, session: SessionDep, caller: ReaderKey
) -> protocol.SummaryReport:
    """The account-mapping matrix: my populations against the partner's visible ones,
    matched accounts per cell, small cells suppressed as `<k`."""
    return await run_in_threadpool(
        _in_one_trip, service.summary, session, request.app.state.settings, caller, partnership_id
    )


@router.get(
    "/reports/overlaps",
    response_model=protocol.OverlapPage,
    responses={
        200: {
            "content": {
                binary_pages.BINARY_OVERLAPS: {
                    "schema": {"type": "string", "format": "binary"},
                }
            },
            "description": "JSON, or with `Accept: "
            f"{binary_pages.BINARY_OVERLAPS}` the same page in binary "
            "(docs/protocol.md §9.1)",
        }
    },
)
async def overlaps_report(
    partnership_id: uuid.UUID,
    request: Request,
    session: SessionDep,
    caller: ReaderKey,
    mine: str | None = None,
    theirs: str | None = None,
    cursor: str | None = None,
    limit: Limit = 100,
) -> Response:
    """My matched records with the partner's populations and released sealed fields."""
    # The service builds the page as protocol.OverlapPage's JSON shape (see there), or as
    # a binary page when the client asks for one (bulk exports: no base64 or JSON per
    # record on either side).
    binary = binary_pages.BINARY_OVERLAPS in request.headers.get("accept", "")
    page = await run_in_threadpool(
        _in_one_trip,
        service.overlaps,
        session,
        request.app.state.settings,
        caller,
        partnership_id,
        mine=mine,
        theirs=theirs,
        cursor=cursor,
        limit=limit,
        binary=binary,
    )
    headers = {"Vary": "Accept"}
    if isinstance(page, bytes):
        return Response(page, media_type=binary_pages.BINARY_OVERLAPS, headers=headers)
    return Response(orjson.dumps(page), media_type="application/json", headers=headers)


@router.get("/reports/overlaps/cursors", response_model=protocol.OverlapCursors)
async def overlap_cursors(
    partnership_id: uuid.UUID,
    request: Request,
    session: SessionDep,
    caller: ReaderKey,
    mine: str | None = None,
    theirs: str | None = None,
    limit: Limit = MAX_REPORT_PAGE,
) -> dict[str, Any]:
    """Where each page of the overlaps report starts (`limit` records per page): the
    cursors to fetch several pages at once (the SDK's bulk export fetches two)."""
    return await run_in_threadpool(
        _in_one_trip,
        service.overlap_cursors,
        session,
        request.app.state.settings,
        caller,
        partnership_id,
        mine=mine,
        theirs=theirs,
        limit=limit,
    )


@router.get("/reports/white-space", response_model=protocol.WhiteSpacePage)
async def white_space_report(
    partnership_id: uuid.UUID,
    request: Request,
    session: SessionDep,
    caller: ReaderKey,
    theirs: str | None = None,
    not_in: Annotated[str | None, Query(description="comma-separated populations of mine")] = None,
    cursor: str | None = None,
    limit: Limit = 100,
) -> protocol.WhiteSpacePage:
    """The partner's records in `full` populations that match none of mine."""
    pops = [s for s in (not_in or "").split(",") if s] or None
    return await run_in_threadpool(
        _in_one_trip,
        service.white_space,
        session,
        request.app.state.settings,
        caller,
        partnership_id,
        theirs=theirs,
        not_in=pops,
        cursor=cursor,
        limit=limit,
    )


@router.post("/lookup", response_model=protocol.LookupResponse)
async def lookup(
    partnership_id: uuid.UUID,
    body: protocol.LookupRequest,
    request: Request,
    session: SessionDep,
    caller: ReaderKey,
) -> protocol.LookupResponse:
    """For tokens of accounts in my own committed lists: the partner's populations and
    released fields."""
    return await run_in_threadpool(
        _in_one_trip,
        service.lookup,
        session,
        request.app.state.settings,
        caller,
        partnership_id,
        body,
    )
