"""SQL of the reports. Sides are normalised to "mine"/"theirs": matches store the
inviter's record as side a and the invitee's as side b."""

from __future__ import annotations

import json
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import and_, bindparam, exists, select, text, tuple_
from sqlalchemy.orm import Session

from service.models import match_counts, matches, records, tokens
from service.repository import Compiled


@dataclass(frozen=True)
class Sides:
    """Which match columns are mine."""

    mine_is_a: bool

    @property
    def my_upload(self) -> Any:
        return matches.c.a_upload if self.mine_is_a else matches.c.b_upload

    @property
    def my_seq(self) -> Any:
        return matches.c.a_seq if self.mine_is_a else matches.c.b_seq

    @property
    def their_upload(self) -> Any:
        return matches.c.b_upload if self.mine_is_a else matches.c.a_upload

    @property
    def their_seq(self) -> Any:
        return matches.c.b_seq if self.mine_is_a else matches.c.a_seq


_MATCHED_COUNTS = Compiled(
    select(
        match_counts.c.a_upload,
        match_counts.c.b_upload,
        match_counts.c.a_records,
        match_counts.c.b_records,
    ).where(match_counts.c.partnership_id == bindparam("pid"))
)


def matched_counts(session: Session, sides: Sides, pid: uuid.UUID) -> dict[tuple[int, int], int]:
    """(my upload, their upload) -> distinct records of mine that match, for the whole
    partnership in one read (precomputed by the match job; absent until it has run)."""
    rows = _MATCHED_COUNTS.rows(session, {"pid": pid})
    if sides.mine_is_a:
        return {(a, b): int(na) for a, b, na, _ in rows}
    return {(b, a): int(nb) for a, b, _, nb in rows}


def matched_mine(
    session: Session,
    sides: Sides,
    my_upload: int,
    their_uploads: Sequence[int],
    after_seq: int,
    limit: int,
) -> list[int]:
    """Seqs of my records in `my_upload` matching any of `their_uploads`, ascending."""
    if not their_uploads:
        return []
    rows = (
        session.execute(
            select(sides.my_seq)
            .where(
                sides.my_upload == my_upload,
                sides.their_upload.in_(their_uploads),
                sides.my_seq > after_seq,
            )
            .group_by(sides.my_seq)
            .order_by(sides.my_seq)
            .limit(limit)
        )
        .scalars()
        .all()
    )
    return [int(r) for r in rows]


def my_records(session: Session, upload: int, seqs: Sequence[int]) -> dict[int, tuple[str, bytes]]:
    rows = session.execute(
        select(records.c.seq, records.c.ref, records.c.self_sealed).where(
            records.c.upload_num == upload, records.c.seq.in_(seqs)
        )
    ).all()
    return {int(s): (ref, bytes(blob)) for s, ref, blob in rows}


def partner_matches(
    session: Session,
    sides: Sides,
    my_upload: int,
    my_seqs: Sequence[int],
    their_uploads: Sequence[int],
) -> list[tuple[int, int, str, bytes | None]]:
    """(my seq, their upload, their ref, their partner-sealed) for my matched records."""
    if not my_seqs or not their_uploads:
        return []
    r = records.alias("their")
    rows = session.execute(
        select(sides.my_seq, sides.their_upload, r.c.ref, r.c.partner_sealed)
        .join(r, and_(r.c.upload_num == sides.their_upload, r.c.seq == sides.their_seq))
        .where(
            sides.my_upload == my_upload,
            sides.my_seq.in_(my_seqs),
            sides.their_upload.in_(their_uploads),
        )
        .order_by(sides.my_seq, sides.their_upload, r.c.seq)
    ).all()
    return [(int(a), int(b), ref, bytes(p) if p is not None else None) for a, b, ref, p in rows]


def _overlap_page_sql(mine: str, theirs: str) -> Any:
    return text(
        f"""
        WITH page AS (
            SELECT DISTINCT {mine}_seq AS seq FROM matches
            WHERE {mine}_upload = :my_upload
              AND {theirs}_upload = ANY(CAST(:their_uploads AS integer[]))
              AND {mine}_seq > :after_seq
            ORDER BY 1 LIMIT :limit
        )
        SELECT page.seq, mine.ref, mine.self_sealed, m.{theirs}_upload, their.ref,
               their.partner_sealed
        FROM page
        JOIN records AS mine ON mine.upload_num = :my_upload AND mine.seq = page.seq
        -- a parameterised index probe per record of the page (OFFSET 0 keeps the
        -- planner from flattening it into a hash join over all the list's matches)
        CROSS JOIN LATERAL (
            SELECT {theirs}_upload, {theirs}_seq FROM matches
            WHERE {mine}_upload = :my_upload AND {mine}_seq = page.seq
              AND {theirs}_upload = ANY(CAST(:their_uploads AS integer[]))
            OFFSET 0
        ) AS m
        JOIN records AS their ON their.upload_num = m.{theirs}_upload
             AND their.seq = m.{theirs}_seq
        ORDER BY page.seq, m.{theirs}_upload, their.seq
        """  # noqa: S608 (the two names are the literals "a" and "b")
    )


_OVERLAP_PAGE_PG = {
    True: Compiled(_overlap_page_sql("a", "b"), binary=True),
    False: Compiled(_overlap_page_sql("b", "a"), binary=True),
}

# (my seq, my ref, my self-sealed, [(their upload, their ref, their partner-sealed), ...])
OverlapRow = tuple[int, str, bytes, list[tuple[int, str, bytes | None]]]


def overlap_page(
    session: Session,
    sides: Sides,
    my_upload: int,
    their_uploads: Sequence[int],
    after_seq: int,
    limit: int,
) -> list[OverlapRow]:
    """Up to `limit` records of mine in `my_upload` after `after_seq` that match any of
    `their_uploads`, ascending, each with its matched partner records: one round trip on
    PostgreSQL (page, my records and the partner's in one statement)."""
    if not their_uploads:
        return []
    if session.get_bind().dialect.name != "postgresql":
        seqs = matched_mine(session, sides, my_upload, their_uploads, after_seq, limit)
        recs = my_records(session, my_upload, seqs)
        found: dict[int, list[tuple[int, str, bytes | None]]] = {s: [] for s in seqs}
        for my_seq, their_num, ref, sealed in partner_matches(
            session, sides, my_upload, seqs, their_uploads
        ):
            found[my_seq].append((their_num, ref, sealed))
        return [(s, recs[s][0], recs[s][1], found[s]) for s in seqs]
    # Each partner record of a page is looked up once (unless two of my records match it),
    # so the Memoize node the planner puts before those lookups misses every time and only
    # costs: 10,000-record page at 1M x 1M, 55-64 ms with it, 49 ms without.
    conn = session.connection()
    conn.exec_driver_sql("SET LOCAL enable_memoize = off")
    rows = _OVERLAP_PAGE_PG[sides.mine_is_a].rows(
        session,
        {
            "my_upload": my_upload,
            "their_uploads": list(their_uploads),
            "after_seq": after_seq,
            "limit": limit,
        },
    )
    conn.exec_driver_sql("RESET enable_memoize")
    out: list[OverlapRow] = []
    for seq, ref, self_sealed, their_num, their_ref, sealed in rows:
        if not out or out[-1][0] != seq:
            out.append((int(seq), ref, bytes(self_sealed), []))
        out[-1][3].append(
            (int(their_num), their_ref, bytes(sealed) if sealed is not None else None)
        )
    return out


def _page_ends_sql(mine: str, theirs: str) -> Any:
    return text(
        f"""
        SELECT seq, n, total FROM (
            SELECT seq, row_number() OVER (ORDER BY seq) AS n, count(*) OVER () AS total
            FROM (
                SELECT DISTINCT {mine}_seq AS seq FROM matches
                WHERE {mine}_upload = :my_upload AND {theirs}_upload IN :their_uploads
            ) AS d
        ) AS x
        WHERE (n + :carry) % :limit = 0 OR n = total
        ORDER BY seq
        """  # noqa: S608 (the two names are the literals "a" and "b")
    ).bindparams(bindparam("their_uploads", expanding=True))


_PAGE_ENDS = {True: _page_ends_sql("a", "b"), False: _page_ends_sql("b", "a")}


def page_ends(
    session: Session,
    sides: Sides,
    my_upload: int,
    their_uploads: Sequence[int],
    carry: int,
    limit: int,
) -> tuple[list[int], int]:
    """Where pages of `limit` end in my records of `my_upload` that match any of
    `their_uploads` (ascending), when `carry` records of the page were filled before this
    list: the seqs of the page-ending records, and how many records match."""
    if not their_uploads:
        return [], 0
    rows = session.execute(
        _PAGE_ENDS[sides.mine_is_a],
        {
            "my_upload": my_upload,
            "their_uploads": list(their_uploads),
            "carry": carry,
            "limit": limit,
        },
    ).all()
    ends = [int(seq) for seq, n, _ in rows if (int(n) + carry) % limit == 0]
    return ends, int(rows[-1][2]) if rows else 0


# base64url without padding, as service.report.service._b64 (encode() wraps at 76 chars);
# four replace() calls cost less than one translate() here (1.5 vs 2.3 µs per value)
_B64URL = (
    "replace(replace(replace(replace(encode({}, 'base64'), E'\\n', ''), '+', '-'), '/', '_'),"
    " '=', '')"
)


def _overlap_items_sql(mine: str, theirs: str) -> Any:
    partner_sealed = _B64URL.format("their.partner_sealed")
    self_sealed = _B64URL.format("mine.self_sealed")
    # a partner record opens only if its list sealed fields, the policy still releases all
    # of them (rel.withheld is NULL) and the record has a payload (service._Releaser)
    has = "rel.fields <> '[]' AND their.partner_sealed IS NOT NULL"
    return text(
        f"""
        WITH page AS (
            SELECT DISTINCT {mine}_seq AS seq FROM matches
            WHERE {mine}_upload = :my_upload
              AND {theirs}_upload = ANY(CAST(:their_uploads AS integer[]))
              AND {mine}_seq > :after_seq
            ORDER BY 1 LIMIT :limit
        ), rel AS (
            SELECT * FROM unnest(CAST(:their_uploads AS integer[]), CAST(:pops AS text[]),
                                 CAST(:fields AS text[]), CAST(:withheld AS text[]))
                AS r(num, pop, fields, withheld)
        )
        SELECT page.seq, p.n, json_build_object(
            'ref', mine.ref, 'population', CAST(:my_pop AS text),
            'self_sealed', {self_sealed}, 'partner', p.partner)::text
        FROM page
        JOIN records AS mine ON mine.upload_num = :my_upload AND mine.seq = page.seq
        CROSS JOIN LATERAL (
            SELECT count(*) AS n, coalesce(json_agg(json_build_object(
                'population', rel.pop,
                'ref', their.ref,
                'sealed', CASE WHEN {has} AND rel.withheld IS NULL THEN {partner_sealed} END,
                'fields', CAST(CASE WHEN {has} AND rel.withheld IS NULL THEN rel.fields
                                    ELSE '[]' END AS json),
                'withheld', CASE WHEN {has} THEN rel.withheld END
            ) ORDER BY m.up, their.seq), '[]') AS partner
            -- a parameterised index probe per record of the page (see overlap_page)
            FROM (
                SELECT {theirs}_upload AS up, {theirs}_seq AS seq FROM matches
                WHERE {mine}_upload = :my_upload AND {mine}_seq = page.seq
                  AND {theirs}_upload = ANY(CAST(:their_uploads AS integer[]))
                OFFSET 0
            ) AS m
            JOIN records AS their ON their.upload_num = m.up AND their.seq = m.seq
            JOIN rel ON rel.num = m.up
        ) AS p
        ORDER BY page.seq
        """  # noqa: S608 (the two names are the literals "a" and "b")
    )


_OVERLAP_ITEMS_PG = {
    True: Compiled(_overlap_items_sql("a", "b")),
    False: Compiled(_overlap_items_sql("b", "a")),
}


@dataclass(frozen=True)
class Release:
    """How the records of one partner list are released to me (service._Releaser)."""

    upload: int
    population: str
    fields: Sequence[str]  # sealed in the list's payloads
    withheld: str | None  # why its payloads are withheld, if they are


def overlap_items_pg(
    session: Session,
    sides: Sides,
    my_upload: int,
    my_population: str,
    releases: Sequence[Release],
    after_seq: int,
    limit: int,
) -> list[tuple[int, int, str]]:
    """PostgreSQL only: the items of `overlap_page` built by the database, each as the
    JSON text of a `protocol.OverlapItem`: (my seq, partner records in it, JSON). The
    per-record work (JSON, base64url) is C in the database instead of Python here: a
    bulk export's server CPU per record is most of what this saves."""
    if not releases:
        return []
    rows = _OVERLAP_ITEMS_PG[sides.mine_is_a].rows(
        session,
        {
            "my_upload": my_upload,
            "my_pop": my_population,
            "their_uploads": [r.upload for r in releases],
            "pops": [r.population for r in releases],
            "fields": [json.dumps(list(r.fields)) for r in releases],
            "withheld": [r.withheld for r in releases],
            "after_seq": after_seq,
            "limit": limit,
        },
    )
    return rows


def _partner_matches_many_sql(mine: str, theirs: str) -> Any:
    return text(
        f"""
        SELECT m.{mine}_upload, m.{mine}_seq, m.{theirs}_upload, their.ref, their.partner_sealed
        FROM unnest(CAST(:my_uploads AS integer[]), CAST(:my_seqs AS bigint[])) AS f(up, seq)
        JOIN matches AS m ON m.{mine}_upload = f.up AND m.{mine}_seq = f.seq
        JOIN unnest(CAST(:ok_mine AS integer[]), CAST(:ok_theirs AS integer[]))
             AS ok(mine, theirs)
             ON ok.mine = m.{mine}_upload AND ok.theirs = m.{theirs}_upload
        JOIN records AS their ON their.upload_num = m.{theirs}_upload
             AND their.seq = m.{theirs}_seq
        ORDER BY 1, 2, 3, their.seq
        """  # noqa: S608 (the two names are the literals "a" and "b")
    )


_PARTNER_MATCHES_MANY_PG = {
    True: Compiled(_partner_matches_many_sql("a", "b")),
    False: Compiled(_partner_matches_many_sql("b", "a")),
}


def partner_matches_many(
    session: Session,
    sides: Sides,
    mine: Sequence[tuple[int, int]],
    allowed: dict[int, Sequence[int]],
) -> list[tuple[int, int, int, str, bytes | None]]:
    """(my upload, my seq, their upload, their ref, their partner-sealed) for the given
    records of mine, against the partner lists each of my lists may see (`allowed`: my
    upload -> their uploads): one round trip on PostgreSQL, one per list of mine elsewhere."""
    mine = [(u, s) for u, s in mine if allowed.get(u)]
    if not mine:
        return []
    if session.get_bind().dialect.name != "postgresql":
        out = []
        for up in sorted({u for u, _ in mine}):
            seqs = sorted({s for u, s in mine if u == up})
            out += [
                (up, my_seq, their_num, ref, sealed)
                for my_seq, their_num, ref, sealed in partner_matches(
                    session, sides, up, seqs, allowed[up]
                )
            ]
        return out
    pairs = [(u, t) for u, ts in allowed.items() for t in ts]
    rows = _PARTNER_MATCHES_MANY_PG[sides.mine_is_a].rows(
        session,
        {
            "my_uploads": [u for u, _ in mine],
            "my_seqs": [s for _, s in mine],
            "ok_mine": [u for u, _ in pairs],
            "ok_theirs": [t for _, t in pairs],
        },
    )
    return [
        (int(u), int(s), int(t), ref, bytes(p) if p is not None else None)
        for u, s, t, ref, p in rows
    ]


def unmatched_theirs(
    session: Session,
    sides: Sides,
    their_upload: int,
    my_uploads: Sequence[int],
    after_seq: int,
    limit: int,
) -> list[tuple[int, str, bytes | None]]:
    """The partner's records of `their_upload` matching none of `my_uploads`."""
    cond = [records.c.upload_num == their_upload, records.c.seq > after_seq]
    if my_uploads:
        cond.append(
            ~exists().where(
                sides.their_upload == their_upload,
                sides.their_seq == records.c.seq,
                sides.my_upload.in_(my_uploads),
            )
        )
    rows = session.execute(
        select(records.c.seq, records.c.ref, records.c.partner_sealed)
        .where(*cond)
        .order_by(records.c.seq)
        .limit(limit)
    ).all()
    return [(int(s), ref, bytes(p) if p is not None else None) for s, ref, p in rows]


def my_records_with_tokens(
    session: Session, my_uploads: Sequence[int], wanted: Sequence[tuple[int, bytes]]
) -> dict[tuple[int, bytes], list[tuple[int, int]]]:
    """For (kind, value) tokens: my (upload, seq) records carrying them."""
    out: dict[tuple[int, bytes], list[tuple[int, int]]] = {w: [] for w in wanted}
    if not my_uploads or not wanted:
        return out
    if session.get_bind().dialect.name == "postgresql":
        # One index probe per (upload, token) whatever the planner believes: a freshly
        # loaded list has no statistics yet, and with `(kind, value) IN (...)` the planner
        # then read every token of the upload (13 ms for 50k records instead of 0.3 ms).
        rows = _TOKENS_PG.rows(
            session,
            {
                "uploads": list(my_uploads),
                "kinds": [k for k, _ in wanted],
                "values": [v for _, v in wanted],
            },
        )
    else:
        rows = session.execute(
            select(tokens.c.kind, tokens.c.value, tokens.c.upload_num, tokens.c.seq).where(
                tokens.c.upload_num.in_(my_uploads),
                tuple_(tokens.c.kind, tokens.c.value).in_(list(wanted)),
            )
        ).all()  # type: ignore[assignment]
    for kind, value, up, seq in rows:
        out.setdefault((int(kind), bytes(value)), []).append((int(up), int(seq)))
    return out


_TOKENS_PG = Compiled(
    text(
        """
    SELECT t.kind, t.value, t.upload_num, t.seq
    FROM unnest(CAST(:uploads AS integer[])) AS u(num)
    CROSS JOIN unnest(CAST(:kinds AS smallint[]), CAST(:values AS bytea[])) AS w(kind, value)
    JOIN LATERAL (
        SELECT kind, value, upload_num, seq FROM tokens
        WHERE upload_num = u.num AND kind = w.kind AND value = w.value
    ) AS t ON true
    """
    )
)
