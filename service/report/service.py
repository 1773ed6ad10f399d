"""Reports: what the partner's current policy releases to me, stamped with the policy
versions that decided it, and logged in the disclosure chain (DESIGN §5-6)."""

from __future__ import annotations

import base64
import binascii
import json
import uuid
from collections import OrderedDict, defaultdict
from dataclasses import dataclass
from typing import Any, cast

import orjson
from sqlalchemy import and_, bindparam, func, or_, select
from sqlalchemy.orm import Session

from blindmap import binary_pages, protocol
from blindmap.policy import Effective, Policy, ReportKind, Share, count_cell, effective
from service import errors
from service.auth import Principal
from service.config import Settings
from service.disclosure import service as disclosures
from service.models import Company, Partnership, Population, Upload, utcnow
from service.models import Policy as PolicyRow
from service.partnership import service as partnerships
from service.report import queries
from service.repository import Compiled
from service.upload.ingest import KIND_CODES


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


@dataclass(frozen=True, slots=True)
class Listed:
    """A committed list of one side: its upload and its population, as a report needs them."""

    num: int
    id: uuid.UUID
    record_count: int
    sealed_fields: tuple[str, ...]
    slug: str
    display_name: str
    kind: str


class _Pair:
    """Both policies of a partnership at given versions, parsed once, and what they release
    per population pair (policy versions are immutable, so this never goes stale)."""

    __slots__ = ("_eff", "my_policy", "my_version", "their_policy", "their_version")

    def __init__(
        self, my_policy: Policy, my_version: int, their_policy: Policy, their_version: int
    ) -> None:
        self.my_policy, self.my_version = my_policy, my_version
        self.their_policy, self.their_version = their_policy, their_version
        self._eff: dict[tuple[str, str | None], Effective] = {}

    def eff(self, their_pop: str, my_pop: str | None) -> Effective:
        key = (their_pop, my_pop)
        e = self._eff.get(key)
        if e is None:
            e = self._eff[key] = effective(
                self.their_policy,
                their_pop,
                viewer=self.my_policy,
                viewer_population=my_pop,
                policy_version=self.their_version,
                viewer_policy_version=self.my_version,
            )
        return e


# Per-process caches of immutable facts only: a policy version's document, a company's
# slug. Everything that can change (partnership status, which versions are current, which
# lists are committed, population names) is read on every request by `_CONTEXT`, so a
# change made through any process takes effect on the next request.
_PAIRS: OrderedDict[tuple[uuid.UUID, uuid.UUID, int, int], _Pair] = OrderedDict()
_SLUGS: dict[uuid.UUID, str] = {}
_CACHE_SIZE = 1024


@dataclass
class Context:
    """Everything a report needs, read once: both policies and both committed lists."""

    pid: uuid.UUID
    me: uuid.UUID
    partner: uuid.UUID
    pair: _Pair
    mine: dict[str, Listed]
    theirs: dict[str, Listed]
    sides: queries.Sides

    @property
    def my_policy(self) -> Policy:
        return self.pair.my_policy

    @property
    def their_policy(self) -> Policy:
        return self.pair.their_policy

    @property
    def versions(self) -> protocol.PolicyVersions:
        return protocol.PolicyVersions(mine=self.pair.my_version, partner=self.pair.their_version)

    def eff(self, their_pop: str, my_pop: str | None) -> Effective:
        """What the partner's policy releases of its `their_pop` to my `my_pop`."""
        return self.pair.eff(their_pop, my_pop)


def current_version(owner: Any) -> Any:
    return (
        select(func.max(PolicyRow.version))
        .where(PolicyRow.partnership_id == Partnership.id, PolicyRow.owner_id == owner)
        .correlate(Partnership)
        .scalar_subquery()
    )


# The partnership (tenant-scoped by PartnershipRepository's own filter, on a bound
# parameter so that the statement is built and compiled once), both current policy
# versions and both sides' committed lists: one round trip per report.
_CONTEXT = Compiled(
    select(
        Partnership.status,
        Partnership.inviter_id,
        Partnership.invitee_id,
        current_version(Partnership.inviter_id),
        current_version(Partnership.invitee_id),
        Upload.company_id,
        Upload.num,
        Upload.id,
        Upload.record_count,
        Upload.sealed_fields,
        Population.slug,
        Population.display_name,
        Population.kind,
    )
    .select_from(Partnership)
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


def policy_pair(
    session: Session, pid: uuid.UUID, me: uuid.UUID, partner: uuid.UUID, my_v: int, their_v: int
) -> _Pair:
    key = (pid, me, my_v, their_v)
    pair = _PAIRS.get(key)
    if pair is not None:
        return pair
    docs = {
        owner: doc
        for owner, doc in session.execute(
            select(PolicyRow.owner_id, PolicyRow.document).where(
                PolicyRow.partnership_id == pid,
                or_(
                    and_(PolicyRow.owner_id == me, PolicyRow.version == my_v),
                    and_(PolicyRow.owner_id == partner, PolicyRow.version == their_v),
                ),
            )
        )
    }
    pair = _Pair(
        Policy.model_validate(docs[me]), my_v, Policy.model_validate(docs[partner]), their_v
    )
    _PAIRS[key] = pair
    while len(_PAIRS) > _CACHE_SIZE:
        _PAIRS.popitem(last=False)
    return pair


def slug_of(session: Session, company_id: uuid.UUID) -> str:
    """A company's slug (set at creation, never changed)."""
    slug = _SLUGS.get(company_id)
    if slug is None:
        slug = session.execute(select(Company.slug).where(Company.id == company_id)).scalar_one()
        if len(_SLUGS) >= _CACHE_SIZE:
            _SLUGS.clear()
        _SLUGS[company_id] = slug
    return slug


def context(session: Session, caller: Principal, pid: uuid.UUID) -> Context:
    """Read without locks: reports of one partnership run concurrently; only the release
    step at the end (`_release`) is serialised."""
    me = caller.company_id
    rows = _CONTEXT.rows(session, {"pid": pid, "me": me})
    if not rows:
        raise errors.NotFound(f"{partnerships.PartnershipRepository.not_found}: {pid}")
    status, inviter, invitee, v_inviter, v_invitee = rows[0][:5]
    if status != "active":
        raise errors.Conflict(f"This partnership is {status}; reports need an active one.")
    mine_is_a = inviter == me
    partner = invitee if mine_is_a else inviter
    my_v, their_v = (v_inviter, v_invitee) if mine_is_a else (v_invitee, v_inviter)
    if my_v is None or their_v is None:  # every partnership gets version 1 for both at invite
        raise errors.NotFound("No policy for this partnership.")
    lists: dict[uuid.UUID, dict[str, Listed]] = {me: {}, partner: {}}
    for *_, company, num, up_id, count, fields, slug, display_name, kind in rows:
        if num is not None:
            lists[company][slug] = Listed(
                num, up_id, count, tuple(fields or ()), slug, display_name, kind
            )
    return Context(
        pid=pid,
        me=me,
        partner=partner,
        pair=policy_pair(session, pid, me, partner, my_v, their_v),
        mine=lists[me],
        theirs=lists[partner],
        sides=queries.Sides(mine_is_a=mine_is_a),
    )


def _release(
    session: Session,
    settings: Settings,
    ctx: Context,
    report: ReportKind,
    records: int,
    my_pop: str | None = None,
    their_pop: str | None = None,
) -> None:
    """Charge the reveal budget and append the disclosure entry (disclosure.release: the
    partnership row lock orders the chain; the policies that decided the report must
    still be the current ones)."""
    disclosures.release(
        session,
        disclosures.Release(
            partnership_id=ctx.pid,
            viewer_id=ctx.me,
            owner_id=ctx.partner,
            viewer_slug=slug_of(session, ctx.me),
            owner_slug=slug_of(session, ctx.partner),
            report=report.value,
            records=records,
            viewer_version=ctx.pair.my_version,
            owner_version=ctx.pair.their_version,
            viewer_population=my_pop,
            owner_population=their_pop,
        ),
        settings.reveal_budget_per_day,
    )


def _population_or_404(slug: str | None, side: dict[str, Listed], what: str) -> None:
    if slug is not None and slug not in side:
        raise errors.NotFound(f"No committed list for {what} population '{slug}'.")


# -- summary ------------------------------------------------------------------------------
def summary(
    session: Session, settings: Settings, caller: Principal, pid: uuid.UUID
) -> protocol.SummaryReport:
    ctx = context(session, caller, pid)
    visible = [
        x
        for x in ctx.theirs
        if ctx.eff(x, None).level >= Share.count
        or any(ctx.eff(x, y).level >= Share.count for y in ctx.mine)
    ]
    counts = queries.matched_counts(session, ctx.sides, ctx.pid)
    cells: list[protocol.SummaryCell] = []
    for y, my_up in ctx.mine.items():
        for x in visible:
            eff = ctx.eff(x, y)
            if eff.level < Share.count:
                continue
            their_up = ctx.theirs[x]
            matched = counts.get((my_up.num, their_up.num), 0)
            shown = count_cell(eff, matched, my_up.record_count)
            cells.append(
                protocol.SummaryCell(
                    mine=y,
                    theirs=x,
                    matched=shown if isinstance(shown, int) else None,
                    display=str(shown) if shown is not None else "—",
                )
            )
    _release(session, settings, ctx, ReportKind.summary, 0)
    return protocol.SummaryReport(
        partnership_id=ctx.pid,
        generated_at=utcnow(),
        mine=[
            protocol.ReportPopulation(
                slug=y,
                display_name=up.display_name,
                kind=protocol.PopulationKind(up.kind),
                records=up.record_count,
            )
            for y, up in ctx.mine.items()
        ],
        theirs=[
            protocol.ReportPopulation(
                slug=x,
                display_name=ctx.theirs[x].display_name,
                kind=protocol.PopulationKind(ctx.theirs[x].kind),
                records=ctx.theirs[x].record_count,
            )
            for x in visible
        ],
        cells=cells,
        min_count=ctx.their_policy.min_count,
        min_population=ctx.their_policy.min_population,
        policy_versions=ctx.versions,
    )


# -- partner records ----------------------------------------------------------------------
class _Releaser:
    """Builds the partner records released from one partner list under one effective
    policy: the payload only if every field sealed in it is still allowed (DESIGN §5:
    withheld until the owner re-syncs). The decision is the same for every record of the
    list, so it is taken once. Records are plain dicts shaped like
    `protocol.PartnerRecord` (an overlaps page holds hundreds of them; see `overlaps`)."""

    __slots__ = ("fields", "pop", "sealed_fields", "withheld")

    def __init__(self, up: Listed, pop: str, eff: Effective) -> None:
        self.pop = pop
        self.fields = list(up.sealed_fields)
        self.sealed_fields = up.sealed_fields  # the tuple a binary page's release keys on
        dropped = [f for f in up.sealed_fields if f not in eff.fields]
        self.withheld = (
            f"the partner's policy no longer releases {dropped}; withheld until it re-syncs"
            if dropped
            else None
        )

    def record(self, ref: str, sealed: bytes | None) -> dict[str, Any]:
        if sealed is None or not self.fields:
            return _record(self.pop, ref, None, [], None)
        if self.withheld is not None:
            return _record(self.pop, ref, None, [], self.withheld)
        return _record(self.pop, ref, _b64(sealed), list(self.fields), None)

    def raw(
        self, page: binary_pages.OverlapPageWriter, ref: str, sealed: bytes | None
    ) -> tuple[int, str, bytes | None]:
        """`record` for a binary page: (index of its release triple, ref, payload)."""
        if sealed is None or not self.fields:
            return page.release(self.pop, (), None), ref, None
        if self.withheld is not None:
            return page.release(self.pop, (), self.withheld), ref, None
        return page.release(self.pop, self.sealed_fields, None), ref, sealed


def _record(
    population: str, ref: str, sealed: str | None, fields: list[str], withheld: str | None
) -> dict[str, Any]:
    """`protocol.PartnerRecord`, field for field."""
    return {
        "population": population,
        "ref": ref,
        "sealed": sealed,
        "fields": fields,
        "withheld": withheld,
    }


def _partner_record(
    up: Listed, pop: str, eff: Effective, ref: str, sealed: bytes | None
) -> protocol.PartnerRecord:
    return protocol.PartnerRecord.model_validate(_Releaser(up, pop, eff).record(ref, sealed))


def _cursor(cursor: str | None, lists: set[int]) -> tuple[int, int]:
    """(upload, seq) of a cursor, which must point into one of the `lists` paged (a cursor
    of another partnership or report, or of a list since replaced, is refused)."""
    if not cursor:
        return (0, -1)
    try:
        a, b = json.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
        if int(a) not in lists:
            raise ValueError(a)
        return int(a), int(b)
    except (ValueError, TypeError, binascii.Error):
        raise errors.Unprocessable(
            "Invalid cursor: not one this report issued, or the list it pages was replaced "
            "since; start again without a cursor",
            errors=[{"field": "cursor", "in": "query", "message": "not a cursor of this report"}],
        ) from None


def _next_cursor(upload_num: int, seq: int) -> str:
    return base64.urlsafe_b64encode(json.dumps([upload_num, seq]).encode()).rstrip(b"=").decode()


def _versions(ctx: Context) -> dict[str, int]:
    """`protocol.PolicyVersions` as the JSON of a page built by hand."""
    return {"mine": ctx.pair.my_version, "partner": ctx.pair.their_version}


def _overlap_filters_or_404(ctx: Context, mine: str | None, theirs: str | None) -> None:
    _population_or_404(mine, ctx.mine, "your")
    if theirs is not None and (
        theirs not in ctx.theirs or ctx.eff(theirs, mine).level < Share.count
    ):
        raise errors.NotFound(f"No population '{theirs}' of your partner is visible to you.")


def _overlap_lists(
    ctx: Context, mine: str | None, theirs: str | None
) -> list[tuple[str, Listed, dict[str, Effective]]]:
    """The lists of mine an overlaps report walks, in its order (upload number), each
    with the partner populations it may see there and what their policy releases."""
    out = []
    for y in sorted(ctx.mine, key=lambda s: ctx.mine[s].num):
        if mine and y != mine:
            continue
        allowed = {x: ctx.eff(x, y) for x in ctx.theirs if (not theirs or x == theirs)}
        out.append((y, ctx.mine[y], {x: e for x, e in allowed.items() if e.level >= Share.overlap}))
    return out


def overlap_cursors(
    session: Session,
    settings: Settings,
    caller: Principal,
    pid: uuid.UUID,
    *,
    mine: str | None,
    theirs: str | None,
    limit: int,
) -> dict[str, Any]:
    """The cursor of every page of the overlaps report at `limit` records per page (the
    first is null): a bulk export can then ask for several pages at once. It says how
    many records the report holds and where its pages start, which paging through it
    says too; it releases no record (the pages do, each when it is fetched), and is
    logged like the summary: a disclosure entry of the overlaps report with 0 records,
    so the partner sees every look at the report's shape."""
    ctx = context(session, caller, pid)
    _overlap_filters_or_404(ctx, mine, theirs)
    cursors: list[str | None] = [None]
    total = 0
    for _y, my_up, allowed in _overlap_lists(ctx, mine, theirs):
        nums = [ctx.theirs[x].num for x in allowed]
        ends, count = queries.page_ends(session, ctx.sides, my_up.num, nums, total % limit, limit)
        cursors.extend(_next_cursor(my_up.num, seq) for seq in ends)
        total += count
    if total and total % limit == 0:
        cursors.pop()  # the end of the last page starts nothing
    _release(session, settings, ctx, ReportKind.overlaps, 0, mine, theirs)
    return {
        "partnership_id": ctx.pid,
        "items": total,
        "limit": limit,
        "cursors": cursors,
        "policy_versions": _versions(ctx),
    }


def overlaps(
    session: Session,
    settings: Settings,
    caller: Principal,
    pid: uuid.UUID,
    *,
    mine: str | None,
    theirs: str | None,
    cursor: str | None,
    limit: int,
    sql_items: bool | None = None,
    binary: bool = False,
) -> dict[str, Any] | bytes:
    """A page of my matched records. On PostgreSQL the items' JSON is built by the
    database (`sql_items`, on by default there; tests compare it with the Python one).
    With `binary`, the page is the body of a binary overlaps page (docs/protocol.md §9.1:
    raw payloads, no base64 or JSON per record), built from the same rows as the Python
    JSON path on both databases."""
    ctx = context(session, caller, pid)
    _overlap_filters_or_404(ctx, mine, theirs)
    after_up, after_seq = _cursor(cursor, {u.num for y, u in ctx.mine.items() if mine in (None, y)})
    items: list[dict[str, Any] | orjson.Fragment] = []
    writer = binary_pages.OverlapPageWriter() if binary else None
    released = 0
    next_cursor = None
    on_pg = session.get_bind().dialect.name == "postgresql" if sql_items is None else sql_items
    on_pg = on_pg and writer is None  # a binary page is built here from the raw rows
    for y, my_up, allowed in _overlap_lists(ctx, mine, theirs):
        if my_up.num < after_up:
            continue
        by_num = {ctx.theirs[x].num: x for x in allowed}
        start = after_seq if my_up.num == after_up else -1
        need = limit - (len(items) if writer is None else len(writer))
        releasers = {n: _Releaser(ctx.theirs[x], x, allowed[x]) for n, x in by_num.items()}
        if on_pg:  # the items' JSON built by the database (queries.overlap_items_pg)
            rows = queries.overlap_items_pg(
                session,
                ctx.sides,
                my_up.num,
                y,
                [queries.Release(n, r.pop, r.fields, r.withheld) for n, r in releasers.items()],
                start,
                need + 1,
            )
            more = len(rows) > need
            rows = rows[:need]
            for _, n, item in rows:
                items.append(orjson.Fragment(item))
                released += n
            seqs = [r[0] for r in rows]
        else:
            page = queries.overlap_page(
                session, ctx.sides, my_up.num, list(by_num), start, need + 1
            )
            more = len(page) > need
            page = page[:need]
            if writer is not None:
                mine_at = writer.population(y)
                for _, ref, self_sealed, matched in page:
                    writer.item(
                        ref,
                        mine_at,
                        self_sealed,
                        [releasers[n].raw(writer, r, sealed) for n, r, sealed in matched],
                    )
                    released += len(matched)
            else:
                for _, ref, self_sealed, matched in page:
                    partner = [releasers[n].record(r, sealed) for n, r, sealed in matched]
                    # protocol.OverlapItem, field for field
                    items.append(
                        {
                            "ref": ref,
                            "population": y,
                            "self_sealed": _b64(self_sealed),
                            "partner": partner,
                        }
                    )
                    released += len(partner)
            seqs = [p[0] for p in page]
        if more or (len(items) if writer is None else len(writer)) >= limit:
            if seqs:
                next_cursor = _next_cursor(my_up.num, seqs[-1])
            break
    if released:
        _release(session, settings, ctx, ReportKind.overlaps, released, mine, theirs)
    versions = _versions(ctx)
    if writer is not None:
        return writer.body(ctx.pid, next_cursor, versions)
    # protocol.OverlapPage, field for field, serialised by the router with orjson: building
    # and validating hundreds of pydantic models per page cost more than the page's SQL.
    # tests/test_report_release.py checks the body against the model.
    return {
        "partnership_id": ctx.pid,
        "items": items,
        "next_cursor": next_cursor,
        "policy_versions": versions,
    }


def white_space(
    session: Session,
    settings: Settings,
    caller: Principal,
    pid: uuid.UUID,
    *,
    theirs: str | None,
    not_in: list[str] | None,
    cursor: str | None,
    limit: int,
) -> protocol.WhiteSpacePage:
    ctx = context(session, caller, pid)
    for y in not_in or []:
        _population_or_404(y, ctx.mine, "your")
    full = [x for x in ctx.theirs if ctx.eff(x, None).level >= Share.full]
    if theirs is not None:
        if theirs not in full:
            raise errors.NotFound(f"Your partner shares no population '{theirs}' in full.")
        full = [theirs]
    my_nums = [ctx.mine[y].num for y in (not_in if not_in else list(ctx.mine))]
    after_up, after_seq = _cursor(cursor, {ctx.theirs[x].num for x in full})
    items: list[protocol.PartnerRecord] = []
    next_cursor = None
    for x in sorted(full, key=lambda s: ctx.theirs[s].num):
        up = ctx.theirs[x]
        if up.num < after_up:
            continue
        eff = ctx.eff(x, None)
        start = after_seq if up.num == after_up else -1
        rows = queries.unmatched_theirs(
            session, ctx.sides, up.num, my_nums, start, limit - len(items) + 1
        )
        more = len(rows) > limit - len(items)
        rows = rows[: limit - len(items)]
        items += [_partner_record(up, x, eff, ref, sealed) for _, ref, sealed in rows]
        if more or len(items) >= limit:
            if rows:
                next_cursor = _next_cursor(up.num, rows[-1][0])
            break
    if items:
        _release(session, settings, ctx, ReportKind.white_space, len(items), None, theirs)
    return protocol.WhiteSpacePage(
        partnership_id=ctx.pid, items=items, next_cursor=next_cursor, policy_versions=ctx.versions
    )


def lookup(
    session: Session,
    settings: Settings,
    caller: Principal,
    pid: uuid.UUID,
    body: protocol.LookupRequest,
) -> protocol.LookupResponse:
    ctx = context(session, caller, pid)
    wanted: list[tuple[int, bytes]] = []
    for i, t in enumerate(body.tokens):
        try:
            raw = base64.urlsafe_b64decode(t.value + "=" * (-len(t.value) % 4))
        except (binascii.Error, ValueError):
            raw = b""
        if len(raw) != protocol.TOKEN_BYTES:
            raise errors.Unprocessable(
                f"tokens[{i}].value must be base64url of {protocol.TOKEN_BYTES} bytes",
                errors=[{"field": f"tokens.{i}.value", "in": "body", "message": "not a token"}],
            )
        wanted.append((KIND_CODES[t.kind.value], raw))
    by_upload = {up.num: y for y, up in ctx.mine.items()}
    found = queries.my_records_with_tokens(session, list(by_upload), wanted)
    missing = [i for i, w in enumerate(wanted) if not found.get(w)]
    if missing:
        raise errors.Unprocessable(
            "Lookup answers only for accounts in your own committed lists; "
            f"not found there: tokens {missing}. Sync the account first.",
            errors=[
                {"field": f"tokens.{i}", "in": "body", "message": "not in your committed lists"}
                for i in missing
            ],
        )
    # What each of my lists may see of the partner's, and the partner records matched to
    # every found record of mine: one query per list of mine, not one per token.
    allowed_for: dict[int, dict[str, Effective]] = {}
    for up_num, y in by_upload.items():
        allowed = {x: ctx.eff(x, y) for x in ctx.theirs}
        allowed_for[up_num] = {x: e for x, e in allowed.items() if e.level >= Share.overlap}
    matched: dict[tuple[int, int], list[tuple[int, str, bytes | None]]] = defaultdict(list)
    for up_num, my_seq, their_num, ref, sealed in queries.partner_matches_many(
        session,
        ctx.sides,
        sorted({rec for w in wanted for rec in found[w]}),
        {u: [ctx.theirs[x].num for x in allowed_for[u]] for u in by_upload},
    ):
        matched[(up_num, my_seq)].append((their_num, ref, sealed))
    results: list[protocol.LookupResult] = []
    released = 0
    for t, w in zip(body.tokens, wanted, strict=True):
        partner: list[protocol.PartnerRecord] = []
        seen: set[tuple[int, str]] = set()
        for up_num, seq in found[w]:
            allowed = allowed_for[up_num]
            by_num = {ctx.theirs[x].num: x for x in allowed}
            for their_num, ref, sealed in matched[(up_num, seq)]:
                if (their_num, ref) in seen:
                    continue
                seen.add((their_num, ref))
                x = by_num[their_num]
                partner.append(_partner_record(ctx.theirs[x], x, allowed[x], ref, sealed))
        released += len(partner)
        results.append(protocol.LookupResult(kind=t.kind, value=t.value, partner=partner))
    if released:
        _release(session, settings, ctx, ReportKind.lookup, released)
    return protocol.LookupResponse(
        partnership_id=ctx.pid, results=results, policy_versions=ctx.versions
    )
