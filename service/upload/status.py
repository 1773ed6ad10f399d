"""The sync status (`GET /v1/partnerships/{pid}/status`): both sides' committed lists,
the partner's only where its policy shows them.

The most polled endpoint, so one statement: the partnership (tenant-scoped), both
companies' key epochs, both current policy versions, the committed lists with their
population, and the latest match job of each of my lists. Parsed policies come from the
per-version cache the reports use (a version never changes).
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import cast

from sqlalchemy import and_, bindparam, case, select
from sqlalchemy.orm import Session, aliased

from blindmap import protocol
from blindmap.policy import Share
from service import errors
from service.auth import Principal
from service.models import Company, Job, Partnership, Population, Upload
from service.partnership import service as partnerships
from service.report.service import current_version, policy_pair
from service.repository import Compiled

_INVITER, _INVITEE = aliased(Company), aliased(Company)
_LATEST_JOB = (
    select(Job.status)
    .where(Job.upload_num == Upload.num, Job.kind == "match")
    .order_by(Job.id.desc())
    .limit(1)
    .correlate(Upload)
    .scalar_subquery()
)
_STATUS = Compiled(
    select(
        Partnership.status,
        Partnership.inviter_id,
        Partnership.invitee_id,
        _INVITER.key_epoch,
        _INVITEE.key_epoch,
        current_version(Partnership.inviter_id),
        current_version(Partnership.invitee_id),
        Upload.company_id,
        Upload.num,
        Upload.record_count,
        Upload.committed_at,
        Upload.created_at,
        Upload.normalizer_version,
        Upload.my_epoch,
        Upload.partner_epoch,
        Population.slug,
        Population.kind,
        case((Upload.company_id == bindparam("me"), _LATEST_JOB)),
    )
    .select_from(Partnership)
    .join(_INVITER, _INVITER.id == Partnership.inviter_id)
    .join(_INVITEE, _INVITEE.id == Partnership.invitee_id)
    .outerjoin(Upload, and_(Upload.partnership_id == Partnership.id, Upload.status == "committed"))
    .outerjoin(Population, Population.id == Upload.population_id)
    .where(
        Partnership.id == bindparam("pid"),
        partnerships.PartnershipRepository(
            cast(Session, None), cast(uuid.UUID, bindparam("me"))
        ).scope(),
    )
    .order_by(Population.slug)
)


def _utc(at: datetime) -> datetime:
    return at.replace(tzinfo=UTC) if at.tzinfo is None else at.astimezone(UTC)


def sync_status(
    session: Session, caller: Principal, pid: uuid.UUID
) -> protocol.PartnershipSyncStatus:
    """Both sides' committed lists (the partner's only where its policy shows them)."""
    me = caller.company_id
    rows = _STATUS.rows(session, {"pid": pid, "me": me})
    if not rows:
        raise errors.NotFound(f"{partnerships.PartnershipRepository.not_found}: {pid}")
    status, inviter, invitee, epoch_inviter, epoch_invitee, v_inviter, v_invitee = rows[0][:7]
    mine_is_inviter = inviter == me
    partner = invitee if mine_is_inviter else inviter
    my_epoch, their_epoch = (
        (epoch_inviter, epoch_invitee) if mine_is_inviter else (epoch_invitee, epoch_inviter)
    )
    my_v, their_v = (v_inviter, v_invitee) if mine_is_inviter else (v_invitee, v_inviter)
    pair = None
    if status != "ended":
        if my_v is None or their_v is None:
            raise errors.NotFound("No policy for this partnership.")
        pair = policy_pair(session, pid, me, partner, my_v, their_v)
    mine: list[protocol.PopulationSync] = []
    theirs: list[protocol.PopulationSync] = []
    for row in rows:
        company, num, records, committed_at, created_at, version, up_my, up_partner = row[7:15]
        slug, kind, job = row[15:18]
        if num is None:
            continue  # the partnership has no committed list (outer join)
        own = company == me
        if own:
            stale = (up_my, up_partner) != (my_epoch, their_epoch)
        else:
            assert pair is not None  # an ended partnership has no lists left
            if pair.eff(slug, None).level < Share.count:
                continue  # hidden: not even its name
            stale = (up_my, up_partner) != (their_epoch, my_epoch)
        (mine if own else theirs).append(
            protocol.PopulationSync(
                population=slug,
                kind=protocol.PopulationKind(kind),
                records=records,
                committed_at=_utc(committed_at or created_at),
                normalizer_version=version,
                stale_keys=stale,
                match_job=protocol.JobState(job) if own and job is not None else None,
            )
        )
    versions = {s.normalizer_version for s in mine} | {s.normalizer_version for s in theirs}
    warnings = []
    mismatch = bool(mine and theirs and len(versions) > 1)
    if mismatch:
        warnings.append(
            f"Normalizer versions differ ({', '.join(sorted(versions))}): lists of different "
            "versions are not matched. The side with the older SDK should upgrade and re-sync."
        )
    if any(s.stale_keys for s in mine + theirs):
        warnings.append("A key was rotated after some uploads: re-sync them (`blindmap sync`).")
    return protocol.PartnershipSyncStatus(
        partnership_id=pid,
        mine=mine,
        partner=theirs,
        normalizer_mismatch=mismatch,
        warnings=warnings,
    )
