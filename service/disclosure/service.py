"""The disclosure log: every release appended, chained by hash, readable by both sides;
and the per-viewer daily reveal budget it makes enforceable."""

from __future__ import annotations

import json
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import psycopg
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from blindmap.disclosure import GENESIS, _canonical, entry_hash
from service import errors
from service.models import Company, Disclosure, Partnership, RevealSpend, utcnow
from service.models import Policy as PolicyRowVersion


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


def _over_budget(
    pid: uuid.UUID,
    viewer_id: uuid.UUID,
    owner_id: uuid.UUID,
    wanted: int,
    budget: int,
    spent: int,
    oldest: datetime | None,
) -> errors.ServiceError:
    retry = 3600
    if oldest is not None:
        retry = max(1, int((oldest + timedelta(hours=24) - utcnow()).total_seconds()) + 1)
    return record_blocked(
        errors.RateLimited(
            f"This release of {wanted} records would pass the daily reveal budget of "
            f"{budget} records for this partnership ({spent} released in the last 24 "
            "hours).",
            headers={"Retry-After": str(retry)},
            limit=budget,
            spent=spent,
        ),
        pid,
        viewer_id=viewer_id,
        owner_id=owner_id,
        guard="reveal-budget",
    )


def spend(session: Session, p: Partnership, viewer_id: uuid.UUID, wanted: int, budget: int) -> None:
    """Charge `wanted` records to the viewer's budget, or 429 with Retry-After when it
    would pass it. The caller holds the partnership row lock."""
    if wanted <= 0:
        return
    spent, oldest = spent_today(session, p.id, viewer_id)
    if spent + wanted > budget:
        owner_id = p.invitee_id if p.inviter_id == viewer_id else p.inviter_id
        raise _over_budget(p.id, viewer_id, owner_id, wanted, budget, spent, oldest)
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


@dataclass(frozen=True)
class Release:
    """One release to log: who saw what of whom, under which policy versions."""

    partnership_id: uuid.UUID
    viewer_id: uuid.UUID
    owner_id: uuid.UUID
    viewer_slug: str
    owner_slug: str
    report: str
    records: int
    viewer_version: int
    owner_version: int
    viewer_population: str | None = None
    owner_population: str | None = None

    @property
    def policy_versions(self) -> dict[str, int]:
        return {"viewer": self.viewer_version, "owner": self.owner_version}


# -- the release on PostgreSQL: one round trip, the lock held inside the server only --------
# The partnership row lock orders the chain. It is taken by its own statement so that the
# next one (READ COMMITTED: a fresh snapshot per statement) sees every release committed
# before the lock was granted; that statement re-checks status and both policy versions,
# sums the budget, charges it, and appends the entry with its hash computed in SQL from
# the head it reads; then COMMIT. The three are sent as one message, so the lock is held
# for the server's execution time only, never across a client round trip (where a Python
# thread waiting for the GIL would hold up every other release).
_LOCK_SQL = "SELECT 1 FROM partnerships WHERE id = %(pid)s FOR UPDATE"
_RELEASE_SQL = """
WITH head AS (
    SELECT seq, hash FROM disclosures WHERE partnership_id = %(pid)s
    ORDER BY seq DESC LIMIT 1
), spent AS (
    SELECT coalesce(sum(records), 0) AS total, min(hour) AS oldest FROM reveal_spend
    WHERE partnership_id = %(pid)s AND viewer_id = %(viewer)s AND hour >= %(since)s
      AND records > 0
), chk AS (
    SELECT
        (SELECT status FROM partnerships WHERE id = %(pid)s) AS status,
        (SELECT max(version) FROM policies
          WHERE partnership_id = %(pid)s AND owner_id = %(viewer)s) AS viewer_version,
        (SELECT max(version) FROM policies
          WHERE partnership_id = %(pid)s AND owner_id = %(owner)s) AS owner_version,
        spent.total, spent.oldest,
        coalesce((SELECT seq FROM head), 0) + 1 AS seq,
        coalesce((SELECT hash FROM head), %(genesis)s) AS prev_hash,
        clock_timestamp() AS at
    FROM spent
), ok AS (
    SELECT * FROM chk
    WHERE status = 'active' AND viewer_version = %(viewer_version)s
      AND owner_version = %(owner_version)s
      AND (%(records)s <= 0 OR total + %(records)s <= %(budget)s)
), charge AS (
    INSERT INTO reveal_spend (partnership_id, viewer_id, hour, records)
    SELECT %(pid)s, %(viewer)s, %(hour)s, %(records)s FROM ok WHERE %(records)s > 0
    ON CONFLICT (partnership_id, viewer_id, hour)
    DO UPDATE SET records = reveal_spend.records + excluded.records
), entry AS (
    INSERT INTO disclosures (
        partnership_id, seq, viewer_id, owner_id, viewer_slug, owner_slug, report,
        viewer_population, owner_population, records, policy_versions, created_at,
        prev_hash, hash)
    SELECT %(pid)s, seq, %(viewer)s, %(owner)s, %(viewer_slug)s, %(owner_slug)s, %(report)s,
        %(viewer_population)s, %(owner_population)s, %(records)s, %(policy_versions)s::json,
        at, prev_hash,
        encode(sha256(convert_to(
            prev_hash || E'\n' || %(part0)s
            || to_char(at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"')
            || %(part1)s || seq::text || %(part2)s, 'UTF8')), 'hex')
    FROM ok
    RETURNING seq
)
SELECT status, viewer_version, owner_version, total, oldest, (SELECT seq FROM entry) FROM chk
"""
_AT, _SEQ = "@@blindmap-created-at@@", -7777777777777


def _canonical_parts(r: Release) -> tuple[str, str, str]:
    """The entry's canonical JSON (blindmap.disclosure) around its two values that only
    the database knows: before created_at, between it and seq, after seq."""
    text = _canonical(
        {
            "seq": _SEQ,
            "partnership_id": r.partnership_id,
            "viewer": r.viewer_slug,
            "owner": r.owner_slug,
            "report": r.report,
            "viewer_population": r.viewer_population,
            "owner_population": r.owner_population,
            "records": r.records,
            "policy_versions": r.policy_versions,
            "created_at": _AT,
        }
    ).decode()
    head, rest = text.split(f'"{_AT}"')
    middle, tail = rest.split(str(_SEQ))
    assert text.count(_AT) == 1 and rest.count(str(_SEQ)) == 1
    return head + '"', '"' + middle, tail


def release(session: Session, r: Release, budget: int) -> None:
    """Log a release: the partnership must still be active and both policies at the
    versions that decided the report; charge the viewer's reveal budget (429 past it)
    and append the disclosure entry. On PostgreSQL this commits the request's unit of
    work (one round trip, see above); elsewhere it stays in it, under the row lock."""
    on_pg = session.get_bind().dialect.name == "postgresql"
    if on_pg:
        status, viewer_v, owner_v, spent, oldest, seq = _release_pg(session, r, budget)
    else:  # SQLite: one writer at a time anyway; the same steps through the ORM
        p = session.execute(
            select(Partnership).where(Partnership.id == r.partnership_id).with_for_update()
        ).scalar_one()
        versions = {
            owner: version
            for owner, version in session.execute(
                select(PolicyRowVersion.owner_id, func.max(PolicyRowVersion.version))
                .where(PolicyRowVersion.partnership_id == r.partnership_id)
                .group_by(PolicyRowVersion.owner_id)
            )
        }
        status, viewer_v, owner_v = p.status, versions.get(r.viewer_id), versions.get(r.owner_id)
        spent, oldest = spent_today(session, r.partnership_id, r.viewer_id)
        seq = None
    if status != "active":
        raise errors.Conflict(f"This partnership is {status}.")
    if (viewer_v, owner_v) != (r.viewer_version, r.owner_version):
        raise errors.Conflict(
            "A policy changed while the report was being prepared; run it again.",
            headers={"Retry-After": "1"},
        )
    if r.records > 0 and spent + r.records > budget:
        raise _over_budget(
            r.partnership_id, r.viewer_id, r.owner_id, r.records, budget, spent, oldest
        )
    if on_pg:
        if seq is None:  # the statement's checks are the ones above
            raise RuntimeError("the release statement appended no entry")
        return
    spend(session, p, r.viewer_id, r.records, budget)
    append(
        session,
        p,
        viewer_id=r.viewer_id,
        owner_id=r.owner_id,
        report=r.report,
        records=r.records,
        viewer_population=r.viewer_population,
        owner_population=r.owner_population,
        policy_versions=r.policy_versions,
    )


def _release_pg(session: Session, r: Release, budget: int) -> tuple[Any, ...]:
    session.flush()  # whatever the unit of work holds goes into the same commit
    raw: Any = session.connection().connection.driver_connection
    part0, part1, part2 = _canonical_parts(r)
    now = utcnow()
    params = {
        "pid": r.partnership_id,
        "viewer": r.viewer_id,
        "owner": r.owner_id,
        "since": _hour(now) - timedelta(hours=23),
        "hour": _hour(now),
        "records": r.records,
        "budget": budget,
        "viewer_version": r.viewer_version,
        "owner_version": r.owner_version,
        "genesis": GENESIS,
        "viewer_slug": r.viewer_slug,
        "owner_slug": r.owner_slug,
        "report": r.report,
        "viewer_population": r.viewer_population,
        "owner_population": r.owner_population,
        "policy_versions": json.dumps(r.policy_versions),
        "part0": part0,
        "part1": part1,
        "part2": part2,
    }
    # Client-side binding (psycopg quotes every value) lets the three statements go as
    # one simple-protocol message; cheaper in the client than a psycopg pipeline.
    with psycopg.ClientCursor(raw) as cur:
        cur.execute(_LOCK_SQL + ";\n" + _RELEASE_SQL + ";\nCOMMIT", params)
        cur.nextset()
        row = cur.fetchone()
    assert row is not None
    status, viewer_v, owner_v, spent, oldest, seq = row
    return status, viewer_v, owner_v, int(spent), oldest, seq


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
