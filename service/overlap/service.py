"""The match job: join a committed upload's tokens with the partner's committed lists.

Runs in the job worker, in one transaction: it deletes this upload's match rows and
inserts the new ones, so readers see either the old set or the new one.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import TextClause, bindparam, delete, func, insert, select, text
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from blindmap.policy import Policy, name_matching_enabled
from service import jobs
from service.models import Job, Partnership, Upload, UploadChunk, match_counts, matches
from service.policy import service as policies
from service.upload.ingest import KIND_CODES, in_token_order

# One statement per pair of uploads for every token kind matched. A pair of records can
# share tokens of several kinds (and several tokens of one kind: multi-value cells), so
# duplicates within the statement are dropped: on PostgreSQL by DISTINCT (ON CONFLICT took
# a speculative insertion per row, slower), on SQLite by ON CONFLICT DO NOTHING (there
# DISTINCT's sort cost 0.4-0.5 s more per 200k pairs). Nothing else can conflict: this job
# deleted the pair's rows first and match jobs of one partnership are serialised (row
# lock). On SQLite the pairs go in in key order (ORDER BY 2, 4): `matches` is clustered
# on its key, and the join yields pairs in token order, i.e. random record order
# (`python -m bench.match_join --db sqlite`: 1.32 -> 0.80 s at 1M). On PostgreSQL the
# same (a sorted DISTINCT) gained nothing with the hash join a fresh upload gets
# (`python -m bench.match_join`: 1.391 s against 1.390 s).
#
# PostgreSQL, one kind, both lists in token order (the SDK's order: each chunk's key range
# after the one before, migration 0011): the tokens' heap is then in index order, and a
# merge join of the two index scans reads it in order. Without DISTINCT a pair can repeat
# only when a record holds two tokens of the kind that both match one partner record;
# the primary key of `matches` then refuses the statement and the DISTINCT one runs
# instead. 1M x 1M: 0.97 s against 1.3-1.4 s; the same merge over lists in random order
# reads the heap at random (5.8 s), so those keep the hash join.
_JOIN = (
    "INSERT INTO matches (a_upload, a_seq, b_upload, b_seq, partnership_id) "
    "SELECT {distinct}:a_upload, {a_seq}, :b_upload, {b_seq}, :pid "
    "FROM tokens t1 JOIN tokens t2 ON t2.upload_num = :other AND t2.kind = t1.kind "
    "AND t2.value = t1.value "
    "WHERE t1.upload_num = :mine AND t1.kind IN :kinds{tail}"
)


@jobs.handler("match")
def run_match(session: Session, job: Job) -> None:
    if job.upload_num is None:
        return
    up = session.get(Upload, job.upload_num)
    if up is None or up.status != "committed":
        return  # superseded or deleted meanwhile: its successor has its own job
    p = session.execute(
        select(Partnership).where(Partnership.id == up.partnership_id).with_for_update()
    ).scalar_one()
    if p.status != "active":
        return
    partner_id = p.invitee_id if up.company_id == p.inviter_id else p.inviter_id
    i_am_a = up.company_id == p.inviter_id
    mine = Policy.model_validate(policies.current(session, p.id, up.company_id).document)
    theirs = Policy.model_validate(policies.current(session, p.id, partner_id).document)
    kinds = ["domain"]
    if name_matching_enabled(mine, theirs):
        kinds.append("name")
    others = (
        session.execute(
            select(Upload).where(
                Upload.partnership_id == p.id,
                Upload.company_id == partner_id,
                Upload.status == "committed",
                Upload.normalizer_version == up.normalizer_version,
            )
        )
        .scalars()
        .all()
    )
    # Pairs this upload already has, with the kinds they were matched on. Committed
    # uploads never change, so a pair matched on the same kinds is already right: when
    # both companies commit before the first of their two jobs runs, that job matches the
    # pair and the second finds it done (it used to join the same 1M x 1M pair again).
    side = match_counts.c.a_upload if i_am_a else match_counts.c.b_upload
    other_side = match_counts.c.b_upload if i_am_a else match_counts.c.a_upload
    done = dict(
        session.execute(select(other_side, match_counts.c.kinds).where(side == up.num)).all()
    )
    todo = []
    for other in others:
        shared = [KIND_CODES[k] for k in kinds if k in up.token_kinds and k in other.token_kinds]
        mask = sum(1 << code for code in shared)
        if done.pop(other.num, None) != mask:
            todo.append((other, shared, mask))
    # Everything else this upload is paired with is stale (kinds changed, or a pair left
    # over from a partner list since replaced): removed, then matched afresh.
    stale = list(done) + [other.num for other, _, _ in todo]
    for table in (matches, match_counts):
        a_col, b_col = (table.c.a_upload, table.c.b_upload)
        mine_col, theirs_col = (a_col, b_col) if i_am_a else (b_col, a_col)
        if stale:
            session.execute(delete(table).where(mine_col == up.num, theirs_col.in_(stale)))
    if not todo:
        return
    pg = session.get_bind().dialect.name == "postgresql"
    if pg:
        # A fresh upload has no planner statistics until autovacuum analyses it, and the
        # planner then picks a nested loop over every token pair (50k x 50k: minutes). A
        # hash or merge join is always right for this equi-join. With the default 4 MB of
        # work_mem the hash of 1M tokens spilled to disk in 16 batches.
        session.execute(text("SET LOCAL enable_nestloop = off"))
        session.execute(text("SET LOCAL work_mem = '64MB'"))
    for other, shared, mask in todo:
        a, b = (up, other) if i_am_a else (other, up)
        if shared:
            params = {
                "a_upload": a.num,
                "b_upload": b.num,
                "pid": _uuid_param(session, p.id),
                "other": other.num,
                "mine": up.num,
                "kinds": shared,
            }
            if not (
                pg
                and len(shared) == 1
                and _in_token_order(session, up.num)
                and _in_token_order(session, other.num)
                and _merged(session, i_am_a, params)
            ):
                session.execute(_join(i_am_a, pg, distinct=pg), params)
        pair = (matches.c.a_upload == a.num) & (matches.c.b_upload == b.num)
        a_n, b_n = session.execute(
            select(
                func.count(func.distinct(matches.c.a_seq)),
                func.count(func.distinct(matches.c.b_seq)),
            ).where(pair)
        ).one()
        session.execute(
            insert(match_counts).values(
                a_upload=a.num,
                b_upload=b.num,
                partnership_id=p.id,
                a_records=a_n,
                b_records=b_n,
                kinds=mask,
            )
        )
    if pg:
        # Fresh lists have no planner statistics until autovacuum gets to them, and the
        # report queries then pick plans 4x slower (1000-record overlaps page: 200 ms
        # instead of 50 ms at 1M). The reports join and filter records only on
        # (upload_num, seq), and a sample of 3,000 rows (statistics target 10) tells the
        # planner all it uses, for `matches`. For `records` the sample is 300 rows (target
        # 1): each sampled row is a read of a page somewhere in a table of sealed payloads
        # bigger than shared_buffers (3,000 rows: 0.2 s at 1M x 1M, on the match's
        # critical path; 300: ≈ 0.02 s), and all the reports take from it is the row count
        # and that `(upload_num, seq)` is the key: the overlaps page plan is the same.
        session.execute(text("SET LOCAL default_statistics_target = 10"))
        session.execute(text("ANALYZE matches"))
        session.execute(text("SET LOCAL default_statistics_target = 1"))
        session.execute(text("ANALYZE records (upload_num, seq)"))


def _join(i_am_a: bool, pg: bool, *, distinct: bool) -> TextClause:
    sql = _JOIN.format(
        a_seq="t1.seq" if i_am_a else "t2.seq",
        b_seq="t2.seq" if i_am_a else "t1.seq",
        distinct="DISTINCT " if distinct else "",
        tail="" if pg else " ORDER BY 2, 4 ON CONFLICT DO NOTHING",
    )
    return text(sql).bindparams(bindparam("kinds", expanding=True))


def _in_token_order(session: Session, upload_num: int) -> bool:
    """Whether the upload's chunks came in token order (the SDK's order): then its tokens
    were stored in the order of their index."""
    ranges = session.execute(
        select(UploadChunk.token_min, UploadChunk.token_max)
        .where(UploadChunk.upload_num == upload_num)
        .order_by(UploadChunk.n)
    )
    return in_token_order((lo, hi) for lo, hi in ranges)


def _merged(session: Session, i_am_a: bool, params: dict[str, Any]) -> bool:
    """PostgreSQL: the pairs by a merge join of index scans, without DISTINCT; False
    (nothing inserted) when a pair came twice and the DISTINCT statement must run."""
    try:
        with session.begin_nested():
            session.execute(text("SET LOCAL enable_hashjoin = off"))
            session.execute(text("SET LOCAL enable_sort = off"))
            session.execute(_join(i_am_a, True, distinct=False), params)
            session.execute(text("SET LOCAL enable_hashjoin = DEFAULT"))
            session.execute(text("SET LOCAL enable_sort = DEFAULT"))
    except IntegrityError:
        return False  # the savepoint's rollback also undid the settings
    return True


def _uuid_param(session: Session, value: object) -> object:
    # Raw SQL bypasses the Uuid type: SQLite stores it as 32 hex characters.
    if session.get_bind().dialect.name == "sqlite":
        return value.hex  # type: ignore[attr-defined]
    return value
