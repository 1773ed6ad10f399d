"""The disclosure log: every release appended, chained by hash, readable by both sides;
and the per-viewer daily reveal budget it makes enforceable."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import datetime, timedelta

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from blindmap.disclosure import GENESIS, entry_hash
from service import errors
from service.models import Company, Disclosure, Partnership, RevealSpend, utcnow


def _hour(at: datetime) -> datetime:
    return at.replace(minute=0, second=0, microsecond=0)


def spent_today(
    session: Session, pid: uuid.UUID, viewer_id: uuid.UUID
) -> tuple[int, datetime | None]:
    """Records released to `viewer_id` in the last 24 hours (hour buckets), and the
    oldest bucket that counts."""
    since = _hour(utcnow()) - timedelta(hours=23)
    row = session.execute(
        select(func.coalesce(func.sum(RevealSpend.records), 0), func.min(RevealSpend.hour)).where(
            RevealSpend.partnership_id == pid,
            RevealSpend.viewer_id == viewer_id,
            RevealSpend.hour >= since,
            RevealSpend.records > 0,
        )
    ).one()
    return int(row[0]), row[1]


def spend(session: Session, p: Partnership, viewer_id: uuid.UUID, wanted: int, budget: int) -> None:
    """Charge `wanted` records to the viewer's budget, or 429 with Retry-After when it
    would pass it. The caller holds the partnership row lock."""
    if wanted <= 0:
        return
    spent, oldest = spent_today(session, p.id, viewer_id)
    if spent + wanted > budget:
        retry = 3600
        if oldest is not None:
            retry = max(1, int((oldest + timedelta(hours=24) - utcnow()).total_seconds()) + 1)
        owner_id = p.invitee_id if p.inviter_id == viewer_id else p.inviter_id
        raise record_blocked(
            errors.RateLimited(
                f"This release of {wanted} records would pass the daily reveal budget of "
                f"{budget} records for this partnership ({spent} released in the last 24 "
                "hours).",
                headers={"Retry-After": str(retry)},
                limit=budget,
                spent=spent,
            ),
            p.id,
            viewer_id=viewer_id,
            owner_id=owner_id,
            guard="reveal-budget",
        )
    hour = _hour(utcnow())
    row = session.get(RevealSpend, (p.id, viewer_id, hour))
    if row is None:
        session.add(
            RevealSpend(partnership_id=p.id, viewer_id=viewer_id, hour=hour, records=wanted)
        )
    else:
        row.records += wanted
    session.flush()


def append(
    session: Session,
    p: Partnership,
    *,
    viewer_id: uuid.UUID,
    owner_id: uuid.UUID,
    report: str,
    records: int,
    policy_versions: dict[str, int],
    viewer_population: str | None = None,
    owner_population: str | None = None,
) -> Disclosure:
    """Append an entry; the caller holds the partnership row lock (ordering of the chain)."""
    last = session.execute(
        select(Disclosure)
        .where(Disclosure.partnership_id == p.id)
        .order_by(Disclosure.seq.desc())
        .limit(1)
    ).scalar_one_or_none()
    viewer, owner = session.get_one(Company, viewer_id), session.get_one(Company, owner_id)
    entry = Disclosure(
        partnership_id=p.id,
        seq=(last.seq + 1) if last else 1,
        viewer_id=viewer_id,
        owner_id=owner_id,
        viewer_slug=viewer.slug,
        owner_slug=owner.slug,
        report=report,
        viewer_population=viewer_population,
        owner_population=owner_population,
        records=records,
        policy_versions=policy_versions,
        created_at=utcnow(),
        prev_hash=last.hash if last else GENESIS,
        hash="",
    )
    entry.hash = entry_hash(entry.prev_hash, as_dict(entry))
    session.add(entry)
    session.flush()
    return entry


def as_dict(d: Disclosure) -> dict[str, object]:
    return {
        "seq": d.seq,
        "partnership_id": str(d.partnership_id),
        "viewer": d.viewer_slug,
        "owner": d.owner_slug,
        "report": d.report,
        "viewer_population": d.viewer_population,
        "owner_population": d.owner_population,
        "records": d.records,
        "policy_versions": d.policy_versions,
        "created_at": d.created_at,
        "prev_hash": d.prev_hash,
        "hash": d.hash,
    }


def page(session: Session, pid: uuid.UUID, *, after: int, limit: int) -> Sequence[Disclosure]:
    return (
        session.execute(
            select(Disclosure)
            .where(Disclosure.partnership_id == pid, Disclosure.seq > after)
            .order_by(Disclosure.seq)
            .limit(limit)
        )
        .scalars()
        .all()
    )


def record_blocked(
    err: errors.ServiceError,
    pid: uuid.UUID,
    *,
    viewer_id: uuid.UUID,
    owner_id: uuid.UUID,
    guard: str,
    population: str | None = None,
) -> errors.ServiceError:
    """Make a tripped anti-probing guard visible to the partner: once the failed
    request has rolled back, append a `blocked:<guard>` entry (0 records) to the
    partnership's disclosure log in a transaction of its own."""

    def write(session: Session) -> None:
        p = session.execute(
            select(Partnership).where(Partnership.id == pid).with_for_update()
        ).scalar_one_or_none()
        if p is None:
            return
        append(
            session,
            p,
            viewer_id=viewer_id,
            owner_id=owner_id,
            report=f"blocked:{guard}",
            records=0,
            viewer_population=population,
            policy_versions={},
        )

    err.after_rollback.append(write)
    return err
