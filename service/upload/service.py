"""Rules for uploads: stage → chunks → commit (atomic replace) or abort; reaping."""

from __future__ import annotations

import hashlib
import sqlite3
import uuid
from collections.abc import Sequence
from datetime import timedelta
from typing import Any

import psycopg
from sqlalchemy import delete, func, or_, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from blindmap import protocol
from blindmap.policy import Policy
from service import errors, jobs
from service.audit import service as audit
from service.auth import Principal
from service.config import Settings
from service.disclosure import service as disclosures
from service.models import (
    DEFERRED,
    Company,
    Job,
    Partnership,
    Population,
    Upload,
    UploadChunk,
    match_counts,
    matches,
    records,
    staged_tokens,
    tokens,
    utcnow,
)
from service.partnership import service as partnerships
from service.policy import service as policies
from service.population.service import PopulationRepository
from service.repository import TenantRepository
from service.upload import ingest


class UploadRepository(TenantRepository[Upload]):
    """Uploads are private to the company that sent them."""

    model = Upload
    not_found = "No such upload"


def _active(session: Session, caller: Principal, pid: uuid.UUID) -> Partnership:
    p = partnerships.get(session, caller.company_id, pid)
    if p.status != "active":
        raise errors.Conflict(f"This partnership is {p.status}; uploads need an active one.")
    return p


def _check_epochs(
    session: Session, p: Partnership, company_id: uuid.UUID, mine: int, partner: int
) -> None:
    me = session.get_one(Company, company_id)
    other = session.get_one(Company, partnerships.partner_id_of(p, company_id))
    if (mine, partner) != (me.key_epoch, other.key_epoch):
        raise errors.Conflict(
            f"The tokens were derived with key epochs mine={mine}, partner={partner}, but the "
            f"current ones are mine={me.key_epoch}, partner={other.key_epoch}: a key was "
            "rotated. Fetch the partnership again and re-sync.",
            current_key_epochs={"mine": me.key_epoch, "partner": other.key_epoch},
        )


def _check_sealed_fields(
    session: Session, p: Partnership, company_id: uuid.UUID, population: str, fields: list[str]
) -> None:
    policy = Policy.model_validate(policies.current(session, p.id, company_id).document)
    allowed = set(policy.fields_for(population))
    extra = [f for f in fields if f not in allowed]
    if extra:
        raise errors.Unprocessable(
            f"Your current policy for '{population}' releases {sorted(allowed) or 'no fields'}; "
            f"the manifest seals {extra} as well. Seal only what the policy allows.",
            errors=[{"field": "sealed_fields", "in": "body", "message": f"not allowed: {extra}"}],
        )


def _blocked(
    err: errors.ServiceError, p: Partnership, caller: Principal, guard: str, population: str
) -> errors.ServiceError:
    """A tripped anti-probing guard, recorded where the partner can see it."""
    return disclosures.record_blocked(
        err,
        p.id,
        viewer_id=caller.company_id,
        owner_id=partnerships.partner_id_of(p, caller.company_id),
        guard=guard,
        population=population,
    )


def create(
    session: Session,
    settings: Settings,
    caller: Principal,
    pid: uuid.UUID,
    body: protocol.UploadCreate,
) -> Upload:
    p = _active(session, caller, pid)
    pop = PopulationRepository(session, caller.company_id).by_slug(body.population)
    if protocol.TokenKind.domain not in body.token_kinds or len(set(body.token_kinds)) != len(
        body.token_kinds
    ):
        raise errors.Unprocessable(
            "token_kinds must list 'domain' (the primary key) and no kind twice",
            errors=[{"field": "token_kinds", "in": "body", "message": "must include 'domain'"}],
        )
    if body.record_count > settings.max_population_records:
        raise _blocked(
            errors.PayloadTooLarge(
                f"{body.record_count} records exceed the population size cap of "
                f"{settings.max_population_records}",
                limit_records=settings.max_population_records,
            ),
            p,
            caller,
            "population-cap",
            pop.slug,
        )
    if (body.chunk_count is None) != (body.digest is None):
        missing = "digest" if body.digest is None else "chunk_count"
        raise errors.Unprocessable(
            "chunk_count and digest come together: both in the manifest, or both null "
            "and given at the commit",
            errors=[{"field": missing, "in": "body", "message": "given without the other"}],
        )
    if body.chunk_count is not None:
        _check_chunks_hold(body.chunk_count, body.record_count, settings)
    _check_epochs(session, p, caller.company_id, body.key_epochs.mine, body.key_epochs.partner)
    _check_sealed_fields(session, p, caller.company_id, pop.slug, body.sealed_fields)
    up = Upload(
        partnership_id=p.id,
        company_id=caller.company_id,
        population_id=pop.id,
        status="staged",
        normalizer_version=body.normalizer_version,
        token_kinds=[k.value for k in body.token_kinds],
        sealed_fields=list(body.sealed_fields),
        my_epoch=body.key_epochs.mine,
        partner_epoch=body.key_epochs.partner,
        record_count=body.record_count,
        chunk_count=body.chunk_count or 0,
        digest=DEFERRED if body.digest is None else body.digest,
        confirm_shrink=body.confirm_shrink,
        created_at=utcnow(),
    )
    session.add(up)
    session.flush()
    audit.record(
        session,
        caller,
        "upload.create",
        "upload",
        up.id,
        partnership_id=p.id,
        details={"population": pop.slug, "records": body.record_count},
    )
    return up


def _check_chunks_hold(chunk_count: int, record_count: int, settings: Settings) -> None:
    if chunk_count * settings.max_chunk_records < record_count or (record_count == 0) != (
        chunk_count == 0
    ):
        raise errors.Unprocessable(
            f"{chunk_count} chunks cannot hold {record_count} records "
            f"(at most {settings.max_chunk_records} per chunk)",
            errors=[
                {"field": "chunk_count", "in": "body", "message": "inconsistent with record_count"}
            ],
        )


def get(
    session: Session, caller: Principal, upload_id: uuid.UUID, *, for_update: bool = False
) -> Upload:
    return UploadRepository(session, caller.company_id).get(upload_id, for_update=for_update)


def _staged(session: Session, caller: Principal, upload_id: uuid.UUID) -> Upload:
    up = get(session, caller, upload_id, for_update=True)
    if up.status != "staged":
        raise _not_staged(up.status)
    return up


def _not_staged(status: str) -> errors.Conflict:
    return errors.Conflict(
        f"This upload is {status}; only a staged upload takes chunks or commits."
    )


def put_chunk(
    session: Session,
    settings: Settings,
    caller: Principal,
    upload_id: uuid.UUID,
    n: int,
    body: bytes,
    *,
    binary: bool = False,
) -> tuple[UploadChunk, bool]:
    """Store chunk `n` (NDJSON, or the binary format when `binary`); the same bytes again
    are a no-op, different bytes a 409.

    Chunks of one upload may arrive concurrently (the SDK keeps two in flight). The
    chunk is parsed before any row lock is taken; then the upload row is locked FOR
    SHARE, which lets the chunks of one upload store side by side while a commit or
    abort (FOR UPDATE) waits for them, and they for it. On SQLite every write
    transaction is serial anyway (BEGIN IMMEDIATE)."""
    up = get(session, caller, upload_id)
    if up.status != "staged":
        raise _not_staged(up.status)
    if up.deferred:
        # chunk_count comes with the commit; no upload has more chunks than records
        if not 0 <= n < up.record_count:
            raise errors.Unprocessable(
                f"chunk number {n} is outside 0..{up.record_count - 1}: the manifest "
                f"announced {up.record_count} records, and every chunk holds one at least",
                errors=[{"field": "n", "in": "path", "message": "out of range"}],
            )
    elif not 0 <= n < up.chunk_count:
        raise errors.Unprocessable(
            f"chunk number {n} is outside 0..{up.chunk_count - 1} declared in the manifest",
            errors=[{"field": "n", "in": "path", "message": "out of range"}],
        )
    digest = hashlib.sha256(body).digest()
    existing = session.get(UploadChunk, (up.num, n))
    if existing is not None:
        if existing.sha256 == digest:
            return existing, True
        raise errors.Conflict(f"Chunk {n} was already received with different content.")
    limits: dict[str, Any] = {
        "n": n,
        "upload_num": up.num,
        "partnership_id": up.partnership_id,
        "token_kinds": up.token_kinds,
        "sealed_fields": up.sealed_fields,
        "max_records": min(settings.max_chunk_records, ingest.CHUNK_SLOT),
        "max_sealed_bytes": settings.max_sealed_bytes,
    }
    parsed = (
        # on PostgreSQL the parser also lays out the records' COPY rows as it goes
        ingest.parse_binary_chunk(body, copy_rows=_is_postgresql(session), **limits)
        if binary
        else ingest.parse_chunk(body, **limits)
    )
    # the status may have changed while parsing (a commit or abort of another request)
    locked = session.execute(
        select(Upload.status).where(Upload.num == up.num).with_for_update(read=True)
    ).scalar_one()
    if locked != "staged":
        raise _not_staged(locked)
    keys = parsed.token_keys
    chunk = UploadChunk(
        upload_num=up.num,
        n=n,
        sha256=digest,
        records=len(parsed),
        token_min=min(keys, default=None),
        token_max=max(keys, default=None),
        ref_prints=ingest.ref_prints(parsed.refs),
    )
    try:
        with session.begin_nested():
            session.add(chunk)
            session.flush()
            ingest.store(session, parsed)
    except (IntegrityError, psycopg.IntegrityError, sqlite3.IntegrityError):
        # the chunk number raced an identical or different re-send (primary key of
        # upload_chunks); bulk writes go through the driver, which has its own error class
        session.expire_all()
        again = session.get(UploadChunk, (up.num, n))
        if again is not None and again.sha256 == digest:
            return again, True
        if again is not None:
            raise errors.Conflict(
                f"Chunk {n} was already received with different content."
            ) from None
        raise
    return chunk, False


def _is_postgresql(session: Session) -> bool:
    return session.get_bind().dialect.name == "postgresql"


def chunks_of(session: Session, up: Upload) -> Sequence[UploadChunk]:
    return (
        session.execute(
            select(UploadChunk).where(UploadChunk.upload_num == up.num).order_by(UploadChunk.n)
        )
        .scalars()
        .all()
    )


def _previous(session: Session, up: Upload) -> Upload | None:
    return session.execute(
        select(Upload).where(
            Upload.partnership_id == up.partnership_id,
            Upload.company_id == up.company_id,
            Upload.population_id == up.population_id,
            Upload.status == "committed",
        )
    ).scalar_one_or_none()


def _drop_matches(session: Session, upload_num: int) -> None:
    for table in (matches, match_counts):
        session.execute(
            delete(table).where(or_(table.c.a_upload == upload_num, table.c.b_upload == upload_num))
        )


def _drop_data(session: Session, upload_num: int) -> None:
    """Delete an upload's records, tokens, matches and chunks (children first)."""
    _drop_matches(session, upload_num)
    session.execute(delete(tokens).where(tokens.c.upload_num == upload_num))
    session.execute(delete(staged_tokens).where(staged_tokens.c.upload_num == upload_num))
    session.execute(delete(records).where(records.c.upload_num == upload_num))
    session.execute(delete(UploadChunk).where(UploadChunk.upload_num == upload_num))


def commit(
    session: Session,
    settings: Settings,
    caller: Principal,
    upload_id: uuid.UUID,
    body: protocol.UploadCommit | None = None,
) -> Upload:
    """Verify the upload, then atomically replace the previous list and enqueue matching.

    `body` completes a manifest that left chunk_count and digest for the commit; given
    for a manifest that had them, it must repeat them."""
    up = _staged(session, caller, upload_id)  # locked: no chunk can arrive meanwhile
    _complete_manifest(up, body, settings)
    got = chunks_of(session, up)
    beyond = [c.n for c in got if c.n >= up.chunk_count]
    if beyond:
        raise errors.Unprocessable(
            f"chunk {beyond[0]} was received, but the commit says the upload has "
            f"{up.chunk_count} chunks (0..{up.chunk_count - 1}). Abort and upload again.",
            errors=[
                {"field": "chunk_count", "in": "body", "message": f"chunk {beyond[0]} received"}
            ],
        )
    missing = sorted(set(range(up.chunk_count)) - {c.n for c in got})
    if missing:
        shown = ", ".join(map(str, missing[:20])) + (" …" if len(missing) > 20 else "")
        raise errors.Conflict(f"Chunks not received yet: {shown}.", missing_chunks=missing[:1000])
    received = sum(c.records for c in got)
    if received != up.record_count:
        raise errors.Unprocessable(
            f"The manifest announced {up.record_count} records; the chunks hold {received}.",
            errors=[{"field": "record_count", "in": "manifest", "message": f"received {received}"}],
        )
    digest = hashlib.sha256(b"".join(c.sha256 for c in got)).hexdigest()
    if digest != up.digest:
        raise errors.Unprocessable(
            "The digest of the received chunks does not match the manifest's: a chunk was "
            "altered or reordered. Abort and upload again.",
            errors=[{"field": "digest", "in": "manifest", "message": "mismatch"}],
        )
    # The upload's own checks come before the partnership's lock: held for the ref check
    # (0.35 s at 1M), it kept the partner's match job waiting.
    ingest.check_refs_unique(session, up.num, up.record_count)
    # Serialise commits and match jobs of one partnership (PostgreSQL row lock; SQLite
    # transactions are serial anyway).
    p = partnerships.get(session, caller.company_id, up.partnership_id, for_update=True)
    if p.status != "active":
        raise errors.Conflict(f"This partnership is {p.status}.")
    _check_epochs(session, p, caller.company_id, up.my_epoch, up.partner_epoch)
    pop = session.get_one(Population, up.population_id)
    _check_sealed_fields(session, p, caller.company_id, pop.slug, up.sealed_fields)
    now = utcnow()
    window_start = now - timedelta(days=1)
    recent = (
        session.execute(
            select(Upload.committed_at)
            .where(
                Upload.partnership_id == up.partnership_id,
                Upload.company_id == up.company_id,
                Upload.population_id == up.population_id,
                Upload.committed_at > window_start,
            )
            .order_by(Upload.committed_at)
        )
        .scalars()
        .all()
    )
    if len(recent) >= settings.max_commits_per_day:
        oldest = recent[0] or now
        retry = int((oldest + timedelta(days=1) - now).total_seconds()) + 1
        raise _blocked(
            errors.RateLimited(
                f"'{pop.slug}' was committed {len(recent)} times in the last 24 hours in this "
                f"partnership; the limit is {settings.max_commits_per_day} (anti-probing).",
                headers={"Retry-After": str(retry)},
                limit=settings.max_commits_per_day,
            ),
            p,
            caller,
            "commit-limit",
            pop.slug,
        )
    prev = _previous(session, up)
    if prev is not None and prev.record_count > 0 and not up.confirm_shrink:
        floor = prev.record_count * (1 - settings.max_shrink_fraction)
        if up.record_count == 0 or up.record_count < floor:
            raise errors.Conflict(
                f"This upload ({up.record_count} records) would replace a list of "
                f"{prev.record_count}: a shrink of more than "
                f"{settings.max_shrink_fraction:.0%}. If that is intended, upload again with "
                "confirm_shrink (CLI: --confirm-shrink).",
                limit_fraction=settings.max_shrink_fraction,
            )
    ordered = ingest.in_token_order((c.token_min, c.token_max) for c in got)
    ingest.publish_tokens(session, up.num, up.partnership_id, ordered=ordered)
    if prev is not None:
        # The replaced list leaves every report now (they read committed lists only) and
        # its matches go with it; its records and tokens are deleted by a clean-up job
        # after this transaction, which no longer waits for them (a 1M-record re-sync's
        # commit on PostgreSQL: 3.9 -> 1.0-1.2 s; BENCHMARKS.md, session 8, re-sync).
        prev.status, prev.ended_at = "superseded", now
        _drop_matches(session, prev.num)
    up.status, up.committed_at = "committed", now
    session.flush()
    jobs.enqueue(session, "match", partnership_id=p.id, upload_num=up.num)
    if prev is not None:  # after the match job: the queue takes clean-up last
        jobs.enqueue(session, "drop_upload", partnership_id=p.id, upload_num=prev.num)
    audit.record(
        session,
        caller,
        "upload.commit",
        "upload",
        up.id,
        partnership_id=p.id,
        details={
            "population": pop.slug,
            "records": up.record_count,
            "replaced": prev.record_count if prev else None,
        },
    )
    return up


def _complete_manifest(up: Upload, body: protocol.UploadCommit | None, settings: Settings) -> None:
    if body is None:
        if up.deferred:
            raise errors.Unprocessable(
                "This upload's manifest left chunk_count and digest for the commit: send "
                'them in its body, {"chunk_count": …, "digest": …}.',
                errors=[
                    {"field": "chunk_count", "in": "body", "message": "required"},
                    {"field": "digest", "in": "body", "message": "required"},
                ],
            )
        return
    if not up.deferred:
        for fld, mine, given in (
            ("chunk_count", up.chunk_count, body.chunk_count),
            ("digest", up.digest, body.digest),
        ):
            if mine != given:
                raise errors.Unprocessable(
                    f"The commit's {fld} ({given}) differs from the manifest's ({mine}).",
                    errors=[{"field": fld, "in": "body", "message": "differs from the manifest"}],
                )
        return
    _check_chunks_hold(body.chunk_count, up.record_count, settings)
    # in the commit's transaction: a commit refused below leaves the manifest open
    up.chunk_count, up.digest = body.chunk_count, body.digest


@jobs.handler("drop_upload")
def drop_replaced(session: Session, job: Job) -> None:
    """Free a superseded list's rows; a no-op for any list still staged or committed."""
    up = session.get(Upload, job.upload_num) if job.upload_num is not None else None
    if up is not None and up.status in ("superseded", "aborted"):
        _drop_data(session, up.num)


def abort(session: Session, caller: Principal, upload_id: uuid.UUID) -> None:
    up = _staged(session, caller, upload_id)
    up.status, up.ended_at = "aborted", utcnow()
    _drop_data(session, up.num)
    audit.record(session, caller, "upload.abort", "upload", up.id, partnership_id=up.partnership_id)


def reap(session: Session, settings: Settings) -> int:
    """Abort staged uploads older than the TTL and free their rows."""
    cutoff = utcnow() - timedelta(seconds=settings.staged_upload_ttl_seconds)
    stale = (
        session.execute(
            select(Upload).where(Upload.status == "staged", Upload.created_at < cutoff).limit(100)
        )
        .scalars()
        .all()
    )
    for up in stale:
        up.status, up.ended_at = "aborted", utcnow()
        _drop_data(session, up.num)
        audit.record_raw(session, up.company_id, None, "upload.reaped", "upload", up.id)
    return len(stale)


def latest_job_state(session: Session, upload_num: int) -> protocol.JobState | None:
    status = session.execute(
        select(Job.status)
        .where(Job.upload_num == upload_num, Job.kind == "match")
        .order_by(Job.id.desc())
        .limit(1)
    ).scalar_one_or_none()
    return protocol.JobState(status) if status else None


def view(session: Session, up: Upload) -> protocol.Upload:
    got = chunks_of(session, up) if up.status == "staged" else []
    pop = session.get_one(Population, up.population_id)
    return protocol.Upload(
        id=up.id,
        partnership_id=up.partnership_id,
        population=pop.slug,
        status=protocol.UploadStatus(up.status),
        normalizer_version=up.normalizer_version,
        token_kinds=[protocol.TokenKind(k) for k in up.token_kinds],
        sealed_fields=up.sealed_fields,
        key_epochs={"mine": up.my_epoch, "partner": up.partner_epoch},
        record_count=up.record_count,
        chunk_count=None if up.deferred else up.chunk_count,
        received_chunks=[c.n for c in got],
        received_records=sum(c.records for c in got)
        if got
        else (up.record_count if up.status == "committed" else 0),
        created_at=up.created_at,
        committed_at=up.committed_at,
        match_job=latest_job_state(session, up.num),
    )


def committed_count(session: Session, upload_num: int) -> int:
    return int(
        session.execute(
            select(func.count()).select_from(records).where(records.c.upload_num == upload_num)
        ).scalar_one()
    )
