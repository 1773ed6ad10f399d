"""HTTP routes for a partnership's policies (mine, and my partner's as I may see it)."""

from __future__ import annotations

import uuid

from fastapi import APIRouter

from blindmap import protocol
from blindmap.policy import Policy
from service.auth import AdminKey, ReaderKey
from service.db import SessionDep
from service.partnership import service as partnerships
from service.policy import service

router = APIRouter(prefix="/v1/partnerships/{partnership_id}", tags=["policies"])


@router.get("/policy", response_model=protocol.PolicyVersion)
def get_my_policy(
    partnership_id: uuid.UUID, session: SessionDep, caller: ReaderKey
) -> protocol.PolicyVersion:
    """My current policy toward this partner."""
    p = partnerships.get(session, caller.company_id, partnership_id)
    return service.as_version(session, service.current(session, p.id, caller.company_id))


@router.put("/policy", response_model=protocol.PolicyVersion)
def put_my_policy(
    partnership_id: uuid.UUID, body: Policy, session: SessionDep, caller: AdminKey
) -> protocol.PolicyVersion:
    """Replace my policy: stored as a new immutable version (older ones are kept)."""
    p = partnerships.get(session, caller.company_id, partnership_id, for_update=True)
    return service.as_version(session, service.put(session, caller, p, body))


@router.get("/partner-policy", response_model=protocol.PartnerPolicy)
def get_partner_policy(
    partnership_id: uuid.UUID, session: SessionDep, caller: ReaderKey
) -> protocol.PartnerPolicy:
    """What my partner shares with me: levels, fields and thresholds of the populations
    I may see (hidden ones are omitted)."""
    p = partnerships.get(session, caller.company_id, partnership_id)
    partner = partnerships.partner_id_of(p, caller.company_id)
    return service.partner_view(session, p, caller.company_id, partner)
