"""Policies: append-only versions per (partnership, owner); the partner's view of mine."""

from __future__ import annotations

import uuid

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from blindmap import protocol
from blindmap.policy import STRICTEST_TEMPLATE, Policy, Share, effective, load_template
from service import errors
from service.audit import service as audit
from service.auth import Principal
from service.models import Company, Partnership, Population, utcnow
from service.models import Policy as PolicyRow


def create_initial(session: Session, p: Partnership, owner_id: uuid.UUID) -> PolicyRow:
    """Version 1 of `owner_id`'s policy: the strictest template (DESIGN §5)."""
    row = PolicyRow(
        partnership_id=p.id,
        owner_id=owner_id,
        version=1,
        document=load_template(STRICTEST_TEMPLATE).model_dump(mode="json"),
        created_by_key_id=None,
        created_at=utcnow(),
    )
    session.add(row)
    session.flush()
    return row


def current(session: Session, partnership_id: uuid.UUID, owner_id: uuid.UUID) -> PolicyRow:
    row = session.execute(
        select(PolicyRow)
        .where(PolicyRow.partnership_id == partnership_id, PolicyRow.owner_id == owner_id)
        .order_by(PolicyRow.version.desc())
        .limit(1)
    ).scalar_one_or_none()
    if row is None:  # every partnership gets version 1 for both sides at invite
        raise errors.NotFound("No policy for this partnership.")
    return row


# A policy version never changes once written: its parsed document is kept per process.
_PARSED: dict[tuple[uuid.UUID, uuid.UUID, int], Policy] = {}


def parsed(row: PolicyRow) -> Policy:
    """`row`'s document as a Policy, validated once per process and version."""
    key = (row.partnership_id, row.owner_id, row.version)
    got = _PARSED.get(key)
    if got is None:
        if len(_PARSED) >= 4096:
            _PARSED.clear()
        got = _PARSED[key] = Policy.model_validate(row.document)
    return got


def current_both(session: Session, partnership_id: uuid.UUID) -> dict[uuid.UUID, PolicyRow]:
    """Both owners' current policies of a partnership in one read: owner -> row."""
    rows = session.execute(
        select(PolicyRow)
        .where(PolicyRow.partnership_id == partnership_id)
        .order_by(PolicyRow.owner_id, PolicyRow.version.desc())
    ).scalars()
    out: dict[uuid.UUID, PolicyRow] = {}
    for row in rows:
        out.setdefault(row.owner_id, row)
    if len(out) < 2:
        raise errors.NotFound("No policy for this partnership.")
    return out


def put(session: Session, caller: Principal, p: Partnership, document: Policy) -> PolicyRow:
    """Store `document` as my next policy version for this partnership."""
    if p.status == "ended":
        raise errors.Conflict("This partnership has ended.")
    latest = session.execute(
        select(func.max(PolicyRow.version)).where(
            PolicyRow.partnership_id == p.id, PolicyRow.owner_id == caller.company_id
        )
    ).scalar_one()
    row = PolicyRow(
        partnership_id=p.id,
        owner_id=caller.company_id,
        version=(latest or 0) + 1,
        document=document.model_dump(mode="json"),
        created_by_key_id=caller.key.id,
        created_at=utcnow(),
    )
    session.add(row)
    session.flush()
    audit.record(
        session,
        caller,
        "policy.update",
        "policy",
        row.id,
        partnership_id=p.id,
        details={"version": row.version},
    )
    return row


def as_version(session: Session, row: PolicyRow) -> protocol.PolicyVersion:
    owner = session.get_one(Company, row.owner_id)
    return protocol.PolicyVersion(
        partnership_id=row.partnership_id,
        owner=owner.slug,
        version=row.version,
        document=row.document,
        created_at=row.created_at,
    )


def partner_view(
    session: Session, p: Partnership, viewer_id: uuid.UUID, owner_id: uuid.UUID
) -> protocol.PartnerPolicy:
    """The owner's current policy as the viewer may see it: hidden populations omitted."""
    owner_row, viewer_row = current(session, p.id, owner_id), current(session, p.id, viewer_id)
    owner_policy, viewer_policy = parsed(owner_row), parsed(viewer_row)
    pops = session.execute(
        select(Population).where(Population.company_id == owner_id).order_by(Population.slug)
    ).scalars()
    shared = []
    for pop in pops:
        eff = effective(owner_policy, pop.slug, viewer=viewer_policy)
        if eff.level is Share.hidden:
            continue
        shared.append(
            protocol.SharedPopulation(
                slug=pop.slug,
                display_name=pop.display_name,
                kind=protocol.PopulationKind(pop.kind),
                share=eff.level.value,
                fields=list(eff.fields),
            )
        )
    return protocol.PartnerPolicy(
        partnership_id=p.id,
        owner=session.get_one(Company, owner_id).slug,
        version=owner_row.version,
        populations=shared,
        min_count=owner_policy.min_count,
        min_population=owner_policy.min_population,
        reciprocal=owner_policy.reciprocal,
        match_on=list(owner_policy.match_on),
    )
