"""HTTP routes for /v1/partnerships: invite, list, show, accept, end."""

from __future__ import annotations

import uuid

from fastapi import APIRouter, Query, status

from blindmap import protocol
from service.auth import AdminKey, ReaderKey
from service.db import SessionDep
from service.partnership import service

router = APIRouter(prefix="/v1/partnerships", tags=["partnerships"])


@router.post("", status_code=status.HTTP_201_CREATED, response_model=protocol.Partnership)
def invite_partner(
    body: protocol.PartnershipCreate, session: SessionDep, caller: AdminKey
) -> protocol.Partnership:
    """Invite another company; the partnership is pending until it accepts."""
    p = service.invite(session, caller, body.partner)
    return service.view(session, caller.company_id, p)


@router.get("", response_model=protocol.PartnershipList)
def list_partnerships(
    session: SessionDep,
    caller: ReaderKey,
    status: protocol.PartnershipStatus | None = Query(None),
) -> protocol.PartnershipList:
    """My partnerships (as inviter or invitee), newest first."""
    rows = service.list_mine(session, caller.company_id, status.value if status else None)
    return protocol.PartnershipList(
        items=[service.view(session, caller.company_id, p) for p in rows]
    )


@router.get("/{partnership_id}", response_model=protocol.Partnership)
def get_partnership(
    partnership_id: uuid.UUID, session: SessionDep, caller: ReaderKey
) -> protocol.Partnership:
    """One partnership, with the partner's public key and key epoch."""
    p = service.get(session, caller.company_id, partnership_id)
    return service.view(session, caller.company_id, p)


@router.post("/{partnership_id}/accept", response_model=protocol.Partnership)
def accept_partnership(
    partnership_id: uuid.UUID, session: SessionDep, caller: AdminKey
) -> protocol.Partnership:
    """Accept an invitation (invitee only; both companies need registered keys)."""
    p = service.accept(session, caller, partnership_id)
    return service.view(session, caller.company_id, p)


@router.post("/{partnership_id}/end", response_model=protocol.DeletionReceipt)
def end_partnership(
    partnership_id: uuid.UUID, session: SessionDep, caller: AdminKey
) -> protocol.DeletionReceipt:
    """End the partnership (either side). All its records, tokens, matches, sealed
    payloads, uploads and policies are deleted in this transaction; the receipt counts
    them."""
    r = service.end(session, caller, partnership_id)
    return protocol.DeletionReceipt(
        partnership_id=r.partnership_id, ended_at=r.ended_at, deleted=r.deleted
    )
