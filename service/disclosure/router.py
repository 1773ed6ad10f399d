"""GET /v1/partnerships/{id}/disclosures: the hash-chained log, for both partners."""

from __future__ import annotations

import uuid
from typing import Annotated

from fastapi import APIRouter, Query

from blindmap import protocol
from service import errors
from service.auth import ReaderKey
from service.db import SessionDep
from service.disclosure import service
from service.partnership import service as partnerships

router = APIRouter(tags=["disclosures"])


@router.get("/v1/partnerships/{partnership_id}/disclosures", response_model=protocol.DisclosurePage)
def list_disclosures(
    partnership_id: uuid.UUID,
    session: SessionDep,
    caller: ReaderKey,
    cursor: str | None = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> protocol.DisclosurePage:
    """Every release of either partner's data in this partnership, oldest first. Each
    entry carries the hash of the previous one: `blindmap disclosures verify` checks it."""
    p = partnerships.get(session, caller.company_id, partnership_id)
    try:
        after = int(cursor) if cursor else 0
    except ValueError:
        raise errors.Unprocessable(
            "Invalid cursor",
            errors=[{"field": "cursor", "in": "query", "message": "not a cursor this API issued"}],
        ) from None
    rows = service.page(session, p.id, after=after, limit=limit)
    items = [protocol.Disclosure.model_validate(service.as_dict(d)) for d in rows]
    return protocol.DisclosurePage(
        items=items, next_cursor=str(rows[-1].seq) if len(rows) == limit else None
    )
