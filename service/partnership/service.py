"""Rules for the partnership lifecycle: invite → accept → end (with a deletion receipt)."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass

from sqlalchemy import ColumnElement, delete, or_, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from blindmap import protocol
from blindmap.crypto import encode_public_key
from service import errors
from service.audit import service as audit
from service.auth import Principal
from service.models import Base, Company, Partnership, utcnow
from service.policy import service as policies
from service.repository import TenantRepository

# Rows that outlive a partnership: its tombstone and the trails that must stay readable.
# None of them holds record data.
SURVIVES_END = frozenset({"partnerships", "audit_events", "disclosures"})


class PartnershipRepository(TenantRepository[Partnership]):
    """Partnerships are shared by two tenants: either side may see them."""

    model = Partnership
    not_found = "No such partnership"

    def scope(self) -> ColumnElement[bool]:
        return or_(
            Partnership.inviter_id == self.company_id, Partnership.invitee_id == self.company_id
        )


def _pair(a: uuid.UUID, b: uuid.UUID) -> str:
    x, y = sorted((str(a), str(b)))
    return f"{x}:{y}"


def partner_id_of(p: Partnership, company_id: uuid.UUID) -> uuid.UUID:
    return p.invitee_id if p.inviter_id == company_id else p.inviter_id


def get(
    session: Session, company_id: uuid.UUID, pid: uuid.UUID | str, *, for_update: bool = False
) -> Partnership:
    return PartnershipRepository(session, company_id).get(pid, for_update=for_update)


def get_live(session: Session, company_id: uuid.UUID, pid: uuid.UUID | str) -> Partnership:
    """A partnership that has not ended (ended ones answer 409 to any change)."""
    p = get(session, company_id, pid)
    if p.status == "ended":
        raise errors.Conflict("This partnership has ended.")
    return p


def list_mine(session: Session, company_id: uuid.UUID, status: str | None) -> Sequence[Partnership]:
    repo = PartnershipRepository(session, company_id)
    stmt = repo.select()
    if status:
        stmt = stmt.where(Partnership.status == status)
    return session.execute(stmt.order_by(Partnership.created_at.desc())).scalars().all()


def invite(session: Session, caller: Principal, partner_slug: str) -> Partnership:
    partner = session.execute(
        select(Company).where(Company.slug == partner_slug)
    ).scalar_one_or_none()
    if partner is None:
        raise errors.NotFound(f"No company with slug '{partner_slug}'.")
    if partner.id == caller.company_id:
        raise errors.Unprocessable(
            "You cannot partner with yourself.",
            errors=[{"field": "partner", "in": "body", "message": "is your own company"}],
        )
    pair = _pair(caller.company_id, partner.id)
    existing = session.execute(
        select(Partnership).where(Partnership.live_pair == pair)
    ).scalar_one_or_none()
    if existing is not None:
        raise errors.Conflict(
            f"You already have a partnership with '{partner_slug}' ({existing.id}, "
            f"{existing.status}); end it before inviting again.",
            partnership_id=str(existing.id),
        )
    p = Partnership(
        inviter_id=caller.company_id,
        invitee_id=partner.id,
        status="pending",
        live_pair=pair,
        created_at=utcnow(),
    )
    try:
        with session.begin_nested():
            session.add(p)
            session.flush()
    except IntegrityError:  # a concurrent invite of the same pair won the race
        raise errors.Conflict(
            f"You already have a live partnership with '{partner_slug}'."
        ) from None
    for owner in (p.inviter_id, p.invitee_id):
        policies.create_initial(session, p, owner)
    audit.record(
        session,
        caller,
        "partnership.invite",
        "partnership",
        p.id,
        partnership_id=p.id,
        details={"partner": partner_slug},
    )
    audit.record(
        session,
        caller,
        "partnership.invited",
        "partnership",
        p.id,
        partnership_id=p.id,
        company_id=partner.id,
        details={"by": caller.company.slug},
    )
    return p


def accept(session: Session, caller: Principal, pid: uuid.UUID) -> Partnership:
    p = get(session, caller.company_id, pid, for_update=True)
    if p.status != "pending":
        raise errors.Conflict(f"This partnership is already {p.status}.")
    if p.invitee_id != caller.company_id:
        raise errors.Conflict("Only the invited company can accept; waiting for your partner.")
    inviter, invitee = session.get_one(Company, p.inviter_id), caller.company
    for company, whose in ((invitee, "Your company"), (inviter, f"'{inviter.slug}'")):
        if company.public_key is None:
            raise errors.Conflict(
                f"{whose} has not registered a public key yet; run `blindmap init --register` "
                "before the partnership can be accepted."
            )
    p.status = "active"
    p.accepted_at = utcnow()
    p.inviter_epoch, p.invitee_epoch = inviter.key_epoch, invitee.key_epoch
    session.flush()
    for company_id in (p.inviter_id, p.invitee_id):
        audit.record(
            session,
            caller,
            "partnership.accept",
            "partnership",
            p.id,
            partnership_id=p.id,
            company_id=company_id,
        )
    return p


@dataclass
class Receipt:
    partnership_id: uuid.UUID
    ended_at: object
    deleted: dict[str, int]


def end(session: Session, caller: Principal, pid: uuid.UUID) -> Receipt:
    """End a partnership and delete all of its data in this transaction."""
    p = get(session, caller.company_id, pid, for_update=True)
    if p.status == "ended":
        raise errors.Conflict("This partnership has already ended.")
    deleted = purge(session, p.id)
    p.status, p.live_pair, p.ended_at, p.ended_by_id = "ended", None, utcnow(), caller.company_id
    session.flush()
    for company_id in (p.inviter_id, p.invitee_id):
        audit.record(
            session,
            caller,
            "partnership.end",
            "partnership",
            p.id,
            partnership_id=p.id,
            company_id=company_id,
            details={"deleted": deleted},
        )
    return Receipt(partnership_id=p.id, ended_at=p.ended_at, deleted=deleted)


def purge(session: Session, pid: uuid.UUID) -> dict[str, int]:
    """Delete every partnership-scoped row (children first); count per table."""
    counts: dict[str, int] = {}
    for table in reversed(Base.metadata.sorted_tables):
        if table.name in SURVIVES_END or "partnership_id" not in table.c:
            continue
        result = session.execute(delete(table).where(table.c.partnership_id == pid))
        counts[table.name] = int(result.rowcount or 0)  # type: ignore[attr-defined]
    return counts


def _party(c: Company, epoch_at_acceptance: int | None) -> protocol.Party:
    return protocol.Party(
        slug=c.slug,
        display_name=c.display_name,
        public_key=encode_public_key(c.public_key) if c.public_key else None,
        key_epoch=c.key_epoch,
        epoch_at_acceptance=epoch_at_acceptance,
        key_changed=epoch_at_acceptance is not None and c.key_epoch != epoch_at_acceptance,
    )


def view(session: Session, company_id: uuid.UUID, p: Partnership) -> protocol.Partnership:
    inviter, invitee = (
        session.get_one(Company, p.inviter_id),
        session.get_one(Company, p.invitee_id),
    )
    parties = {
        p.inviter_id: _party(inviter, p.inviter_epoch),
        p.invitee_id: _party(invitee, p.invitee_epoch),
    }
    me, partner = parties[company_id], parties[partner_id_of(p, company_id)]
    return protocol.Partnership(
        id=p.id,
        status=protocol.PartnershipStatus(p.status),
        my_role="inviter" if p.inviter_id == company_id else "invitee",
        me=me,
        partner=partner,
        needs_resync=p.status == "active" and (me.key_changed or partner.key_changed),
        created_at=p.created_at,
        accepted_at=p.accepted_at,
        ended_at=p.ended_at,
    )
