"""GET /v1/audit: my company's audit trail, newest first."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query

from blindmap import protocol
from service.audit import service
from service.auth import ReaderKey
from service.db import SessionDep

router = APIRouter(prefix="/v1/audit", tags=["audit"])


@router.get("", response_model=protocol.AuditPage)
def list_audit_events(
    session: SessionDep,
    caller: ReaderKey,
    cursor: str | None = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> protocol.AuditPage:
    """Every mutation made by or affecting my company: who (key prefix), what, when."""
    rows, next_cursor = service.page(session, caller.company_id, cursor=cursor, limit=limit)
    return protocol.AuditPage(
        items=[protocol.AuditEvent.model_validate(r, from_attributes=True) for r in rows],
        next_cursor=next_cursor,
    )
