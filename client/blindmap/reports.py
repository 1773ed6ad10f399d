"""Decrypt and render reports (DESIGN §6): the escrow relays ciphertext, this joins it.

Pure functions: they take the wire models (`blindmap.protocol`) and the keys and return
plain rows; the renderers turn a report into a rich table, CSV, JSON or one HTML file.
Nothing here opens a connection except the `fetch_*` helpers, which take a `Client`.

What a payload holds (see `blindmap.sync.build_upload`):

- self-sealed (my self key, AAD `self_aad(partnership, my ref)`): `id` (my CRM id or row
  key), `name`, `domain`, `population`;
- partner-sealed (the partnership `seal` key, AAD `partner_aad(partnership, their ref)`):
  the fields the partner's policy released when it uploaded (`name`, `owner_email`, ...).

A payload that does not open (a key was rotated since the upload, or it was tampered
with) never stops a report: it is shown as `(cannot decrypt: key changed? re-sync)` and
counted in `undecryptable`.

JSON output (`to_json`, key order fixed, version in `blindmap_report`)::

    {"blindmap_report": 1,
     "report": "summary" | "overlaps" | "white-space" | "lookup" | "full" | "ecosystem",
     "generated_at": ISO 8601,
     "partnership": {"id", "partner", "partner_name"},          # not in ecosystem
     "policy_versions": {"mine", "partner"},                     # not in ecosystem
     "summary": {"mine": [population], "theirs": [population],
                 "cells": [{"mine", "theirs", "matched", "display"}],
                 "min_count", "min_population"},
     "overlaps": [{"mine": {"ref", "population", "id", "name", "domain", "status"},
                   "partner": [released]}],
     "white_space": [released],
     "lookup": [{"domain", "found", "partner": [released]}],
     "partnerships": [{"id", "partner", "partner_name", "policy_versions"}],  # ecosystem
     "accounts": [{"id", "name", "domain", "populations",                      # ecosystem
                   "partners": [{"partner", "populations", "fields", "notes"}]}],
     "undecryptable": int, "notes": [str]}

    population = {"slug", "display_name", "kind", "records"}
    released   = {"population", "status", "fields", "note"}
    status     = "ok" | "no-fields" | "withheld" | "undecryptable"

Only the sections a report has are present. CSV output is one flat table with a header
row; its first columns name the partner, the partnership and the policy versions, and
every cell that a spreadsheet would run as a formula is neutralised (OWASP: a leading
`'` before `= + - @`, tab or CR).
"""

from __future__ import annotations

import binascii
import csv
import html
import io
import json
import re
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Final, Literal, TypeAlias

from blindmap import crypto, protocol
from blindmap._client import Client
from blindmap._parallel import gc_paused
from blindmap.binary_pages import RawOverlapItem, RawPartnerRecord

__all__ = [
    "JSON_VERSION",
    "UNDECRYPTABLE",
    "Context",
    "EcosystemHit",
    "EcosystemReport",
    "EcosystemRow",
    "LookupRow",
    "MyAccount",
    "OverlapRow",
    "Released",
    "Report",
    "ReportKeys",
    "build_ecosystem",
    "decrypt_lookup",
    "decrypt_overlaps",
    "decrypt_white_space",
    "fetch_overlaps",
    "fetch_white_space",
    "neutralise_csv_cell",
    "overlap_rows",
    "render_table",
    "to_csv",
    "to_html",
    "to_json",
    "white_space_rows",
]

JSON_VERSION: Final = 1
UNDECRYPTABLE: Final = "(cannot decrypt: key changed? re-sync)"
FIELD_ORDER: Final = (
    "id",
    "name",
    "domain",
    "owner",
    "owner_email",
    "stage",
    "type",
    "industry",
    "country",
)
Status: TypeAlias = Literal["ok", "no-fields", "withheld", "undecryptable"]
Cell: TypeAlias = str | int | None


# --------------------------------------------------------------------------- keys


_b64decode: Final = protocol.unb64url
_b64encode: Final = protocol.b64url


class ReportKeys:
    """What a report needs to open payloads of one partnership. Holds secrets; no repr."""

    __slots__ = ("_keys", "_p_prefix", "_partner", "_s_prefix", "_self", "partnership_id")

    def __init__(
        self,
        private_key: crypto.X25519PrivateKey,
        partnership_id: uuid.UUID,
        partner_public: bytes | None,
    ) -> None:
        self.partnership_id = partnership_id
        self._self = crypto.Sealer(crypto.self_key(private_key))
        self._keys = (
            crypto.PartnershipKeys.derive(private_key, partner_public, partnership_id)
            if partner_public is not None
            else None
        )
        # one AES-GCM context for all partner payloads (building one per record cost more
        # than the decryption)
        self._partner = self._keys.sealer() if self._keys is not None else None
        # AAD = label || partnership id || ref: the constant part once
        self._s_prefix = crypto.self_aad(partnership_id, "")
        self._p_prefix = crypto.partner_aad(partnership_id, "")

    @classmethod
    def for_partnership(
        cls, private_key: crypto.X25519PrivateKey, partnership: protocol.Partnership
    ) -> ReportKeys:
        pk = partnership.partner.public_key
        return cls(
            private_key, partnership.id, crypto.decode_public_key(pk) if pk is not None else None
        )

    def __repr__(self) -> str:
        return f"ReportKeys(partnership_id={self.partnership_id}, <keys hidden>)"

    def open_self(self, ref: str, blob: str | bytes) -> dict[str, Any] | None:
        """My own payload (base64url as in JSON pages, or the bytes of a binary page), or
        None when it does not open."""
        try:
            raw = blob if isinstance(blob, bytes) else _b64decode(blob)
            return self._self.open_or_none(self._s_prefix + ref.encode(), raw)
        except (binascii.Error, ValueError):  # not base64url (or not ASCII)
            return None

    def open_partner(self, ref: str, blob: str | bytes) -> dict[str, Any] | None:
        """A partner payload (bound to the partner's `ref`), or None when it does not open."""
        if self._partner is None:
            return None
        try:
            raw = blob if isinstance(blob, bytes) else _b64decode(blob)
            return self._partner.open_or_none(self._p_prefix + ref.encode(), raw)
        except (binascii.Error, ValueError):
            return None

    def domain_token(self, domain: str) -> str:
        """base64url of the partnership's domain token for a normalized domain."""
        if self._keys is None:
            raise crypto.CryptoError("the partner has not registered a public key yet")
        return _b64encode(self._keys.tokenizer("domain").token(domain))


# --------------------------------------------------------------------------- rows


@dataclass(frozen=True, slots=True)
class Context:
    """Which partnership, partner and policy versions produced a report."""

    partnership_id: uuid.UUID
    partner: str
    partner_name: str
    policy_versions: protocol.PolicyVersions | None = None
    generated_at: datetime = field(default_factory=lambda: datetime.now(UTC))

    @classmethod
    def of(
        cls,
        partnership: protocol.Partnership,
        policy_versions: protocol.PolicyVersions | None = None,
        generated_at: datetime | None = None,
    ) -> Context:
        return cls(
            partnership.id,
            partnership.partner.slug,
            partnership.partner.display_name,
            policy_versions,
            generated_at or datetime.now(UTC),
        )

    def versions_text(self) -> str:
        pv = self.policy_versions
        return f"mine v{pv.mine}, partner's v{pv.partner}" if pv else "unknown"

    def as_json(self) -> dict[str, Any]:
        return {
            "id": str(self.partnership_id),
            "partner": self.partner,
            "partner_name": self.partner_name,
        }


@dataclass(frozen=True, slots=True)
class Released:
    """One partner record released to me, decrypted."""

    population: str
    status: Status
    fields: dict[str, Any] = field(default_factory=dict)
    note: str | None = None

    def as_json(self) -> dict[str, Any]:
        return {
            "population": self.population,
            "status": self.status,
            "fields": _ordered(self.fields),
            "note": self.note,
        }


@dataclass(frozen=True, slots=True)
class MyAccount:
    """One of my records, from its self-sealed payload."""

    ref: str
    population: str
    local_id: str | None
    name: str | None
    domain: str | None
    decrypted: bool = True

    def as_json(self) -> dict[str, Any]:
        return {
            "ref": self.ref,
            "population": self.population,
            "id": self.local_id,
            "name": self.name,
            "domain": self.domain,
            "status": "ok" if self.decrypted else "undecryptable",
        }


@dataclass(frozen=True, slots=True)
class OverlapRow:
    mine: MyAccount
    partner: list[Released]


@dataclass(frozen=True, slots=True)
class LookupRow:
    domain: str
    found: bool
    partner: list[Released]


@dataclass(slots=True)
class Report:
    """A report about one partnership; the sections it was asked for are not None."""

    context: Context
    summary: protocol.SummaryReport | None = None
    overlaps: list[OverlapRow] | None = None
    white_space: list[Released] | None = None
    lookup: list[LookupRow] | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def kind(self) -> str:
        present = [
            name
            for name, sec in (
                ("summary", self.summary),
                ("overlaps", self.overlaps),
                ("white-space", self.white_space),
                ("lookup", self.lookup),
            )
            if sec is not None
        ]
        return present[0] if len(present) == 1 else "full"

    @property
    def undecryptable(self) -> int:
        n = 0
        for o in self.overlaps or ():
            n += (not o.mine.decrypted) + sum(r.status == "undecryptable" for r in o.partner)
        n += sum(r.status == "undecryptable" for r in self.white_space or ())
        for lk in self.lookup or ():
            n += sum(r.status == "undecryptable" for r in lk.partner)
        return n

    def add_versions(self, pv: protocol.PolicyVersions, what: str) -> None:
        """Record the policy versions of another section; note it if they differ."""
        ctx = self.context
        if ctx.policy_versions is None:
            self.context = Context(
                ctx.partnership_id, ctx.partner, ctx.partner_name, pv, ctx.generated_at
            )
        elif pv != ctx.policy_versions:
            self.notes.append(
                f"the {what} were produced by other policy versions "
                f"(mine v{pv.mine}, partner's v{pv.partner}): a policy changed meanwhile"
            )


@dataclass(slots=True)
class EcosystemHit:
    """How one partner has one of my accounts."""

    partner: str
    populations: list[str]
    fields: dict[str, Any]
    notes: list[str]


@dataclass(slots=True)
class EcosystemRow:
    local_id: str | None
    name: str | None
    domain: str | None
    populations: list[str]
    partners: list[EcosystemHit]


@dataclass(slots=True)
class EcosystemReport:
    """For each of my accounts: which partners have it, where, with which fields."""

    partnerships: list[Context]
    rows: list[EcosystemRow]
    undecryptable: int = 0
    notes: list[str] = field(default_factory=list)
    generated_at: datetime = field(default_factory=lambda: datetime.now(UTC))
    kind: str = "ecosystem"


AnyReport: TypeAlias = Report | EcosystemReport


# --------------------------------------------------------------------------- decrypt


def _field_order(names: tuple[str, ...]) -> tuple[str, ...]:
    known = [f for f in FIELD_ORDER if f in names]
    return (*known, *sorted(set(names) - set(known)))


_ORDERS: dict[tuple[str, ...], tuple[str, ...]] = {}


def _ordered(fields: Mapping[str, Any]) -> dict[str, Any]:
    """`fields` in FIELD_ORDER, then the others sorted (one order per key set, kept)."""
    names = tuple(fields)
    order = _ORDERS.get(names)
    if order is None:
        if len(_ORDERS) > 1_000:
            _ORDERS.clear()
        order = _ORDERS[names] = _field_order(names)
    if order == names:
        return dict(fields)
    return {k: fields[k] for k in order}


def _release(keys: ReportKeys, rec: protocol.PartnerRecord | RawPartnerRecord) -> Released:
    if rec.sealed is None:
        if rec.withheld:
            return Released(rec.population, "withheld", note=rec.withheld)
        return Released(rec.population, "no-fields")
    opened = keys.open_partner(rec.ref, rec.sealed)
    if opened is None:
        return Released(rec.population, "undecryptable", note=UNDECRYPTABLE)
    return Released(rec.population, "ok", _ordered(opened))


def _text(value: Any) -> str | None:
    return None if value is None else str(value)


def _my_account(keys: ReportKeys, item: protocol.OverlapItem | RawOverlapItem) -> MyAccount:
    mine = keys.open_self(item.ref, item.self_sealed)
    if mine is None:
        return MyAccount(item.ref, item.population, None, None, None, decrypted=False)
    return MyAccount(
        item.ref,
        item.population,
        _text(mine.get("id")),
        _text(mine.get("name")),
        _text(mine.get("domain")),
    )


def decrypt_overlaps(
    keys: ReportKeys, items: Iterable[protocol.OverlapItem | RawOverlapItem]
) -> list[OverlapRow]:
    """My matched records with what the partner released about each (JSON or binary
    pages' items)."""
    with gc_paused():
        return [
            OverlapRow(_my_account(keys, it), [_release(keys, r) for r in it.partner])
            for it in items
        ]


def decrypt_white_space(
    keys: ReportKeys, items: Iterable[protocol.PartnerRecord]
) -> list[Released]:
    with gc_paused():
        return [_release(keys, r) for r in items]


def decrypt_lookup(
    keys: ReportKeys, domains: Mapping[str, str], response: protocol.LookupResponse
) -> list[LookupRow]:
    """`domains` maps each token (base64url) I sent to its domain, in the order asked."""
    by_token: dict[bytes, list[protocol.PartnerRecord]] = {}
    for res in response.results:
        try:
            by_token.setdefault(_b64decode(res.value), []).extend(res.partner)
        except (binascii.Error, ValueError):
            continue
    rows = []
    for token, domain in domains.items():
        recs = by_token.get(_b64decode(token), [])
        rows.append(LookupRow(domain, bool(recs), [_release(keys, r) for r in recs]))
    return rows


# --------------------------------------------------------------------------- fetch


def fetch_overlaps(
    client: Client,
    partnership_id: uuid.UUID,
    *,
    mine: str | None = None,
    theirs: str | None = None,
    on_progress: Callable[[int], None] | None = None,
    limit: int = protocol.MAX_REPORT_PAGE,
) -> tuple[list[protocol.OverlapItem], protocol.PolicyVersions | None, list[str]]:
    """All overlap pages (items, the policy versions, notes)."""
    pages = client.iter_overlap_pages(partnership_id, mine=mine, theirs=theirs, limit=limit)
    return _collect(pages, "overlaps", on_progress)


def fetch_white_space(
    client: Client,
    partnership_id: uuid.UUID,
    *,
    theirs: str | None = None,
    not_in: list[str] | None = None,
    on_progress: Callable[[int], None] | None = None,
    limit: int = protocol.MAX_REPORT_PAGE,
) -> tuple[list[protocol.PartnerRecord], protocol.PolicyVersions | None, list[str]]:
    """All white-space pages (items, the policy versions, notes)."""
    pages = client.iter_white_space_pages(partnership_id, theirs=theirs, not_in=not_in, limit=limit)
    return _collect(pages, "white space", on_progress)


def overlap_rows(
    client: Client,
    keys: ReportKeys,
    partnership_id: uuid.UUID,
    *,
    mine: str | None = None,
    theirs: str | None = None,
    on_progress: Callable[[int], None] | None = None,
    limit: int = protocol.MAX_REPORT_PAGE,
) -> tuple[list[OverlapRow], protocol.PolicyVersions | None, list[str]]:
    """The whole overlaps report, decrypted (rows, the policy versions, notes).

    What `fetch_overlaps` + `decrypt_overlaps` give, faster for large reports: the pages
    come in binary (docs/protocol.md §9.1: no base64 or JSON per record on either side),
    two are requested at once (the escrow builds them side by side) and each is
    decrypted while the next ones are fetched."""
    pages = client.iter_raw_overlap_pages(
        partnership_id, mine=mine, theirs=theirs, limit=limit, in_flight=2
    )
    return _collect(pages, "overlaps", on_progress, lambda items: decrypt_overlaps(keys, items))


def white_space_rows(
    client: Client,
    keys: ReportKeys,
    partnership_id: uuid.UUID,
    *,
    theirs: str | None = None,
    not_in: list[str] | None = None,
    on_progress: Callable[[int], None] | None = None,
    limit: int = protocol.MAX_REPORT_PAGE,
) -> tuple[list[Released], protocol.PolicyVersions | None, list[str]]:
    """The whole white-space report, decrypted page by page as for `overlap_rows`."""
    pages = client.iter_white_space_pages(
        partnership_id, theirs=theirs, not_in=not_in, limit=limit, read_ahead=True
    )
    return _collect(
        pages, "white space", on_progress, lambda items: decrypt_white_space(keys, items)
    )


def _collect(
    pages: Iterable[Any],
    what: str,
    on_progress: Callable[[int], None] | None,
    convert: Callable[[list[Any]], list[Any]] | None = None,
) -> tuple[list[Any], protocol.PolicyVersions | None, list[str]]:
    """Concatenate pages (each through `convert`, if given); note when the policy
    versions change between two pages."""
    items: list[Any] = []
    versions: protocol.PolicyVersions | None = None
    notes: list[str] = []
    # tens of thousands of small models: keep the cyclic GC from re-walking them all
    with gc_paused():
        for page in pages:
            if versions is not None and page.policy_versions != versions:
                notes.append(f"a policy changed while the {what} was fetched: re-run the report")
            versions = page.policy_versions
            items.extend(page.items if convert is None else convert(page.items))
            if on_progress is not None:
                on_progress(len(items))
    return items, versions, notes


# --------------------------------------------------------------------------- ecosystem


def build_ecosystem(
    per_partnership: Sequence[tuple[Context, Sequence[OverlapRow]]],
) -> EcosystemReport:
    """Join decrypted overlaps of several partnerships by my local id (client-side only:
    the escrow cannot, its tokens differ per partnership)."""
    accounts: dict[tuple[str, str], EcosystemRow] = {}
    undecryptable = 0
    for ctx, rows in per_partnership:
        for row in rows:
            m = row.mine
            if not m.decrypted:
                undecryptable += 1
                key = ("ref", f"{ctx.partnership_id}/{m.ref}")
                acc = accounts.setdefault(key, EcosystemRow(None, UNDECRYPTABLE, None, [], []))
            else:
                key = ("id", m.local_id or m.domain or m.ref)
                acc = accounts.setdefault(key, EcosystemRow(m.local_id, m.name, m.domain, [], []))
                acc.name = acc.name or m.name
                acc.domain = acc.domain or m.domain
            if m.population not in acc.populations:
                acc.populations.append(m.population)
            hit = next((h for h in acc.partners if h.partner == ctx.partner), None)
            if hit is None:
                hit = EcosystemHit(ctx.partner, [], {}, [])
                acc.partners.append(hit)
            for rel in row.partner:
                if rel.population not in hit.populations:
                    hit.populations.append(rel.population)
                for k, v in rel.fields.items():
                    hit.fields.setdefault(k, v)
                if rel.status == "undecryptable":
                    undecryptable += 1
                if rel.note and rel.note not in hit.notes:
                    hit.notes.append(rel.note)
    for acc in accounts.values():
        acc.populations.sort()
        acc.partners.sort(key=lambda h: h.partner)
        for h in acc.partners:
            h.populations.sort()
            h.fields = _ordered(h.fields)
    out = sorted(
        accounts.values(),
        key=lambda a: (-len(a.partners), (a.name or "").casefold(), a.local_id or ""),
    )
    return EcosystemReport([c for c, _ in per_partnership], out, undecryptable)


# --------------------------------------------------------------------------- grids
# Every report becomes one or more grids (title, columns, rows) for table/CSV/HTML.


@dataclass(slots=True)
class Grid:
    key: str
    title: str
    columns: list[str]
    rows: list[list[Cell]]
    empty: str = "nothing to show"


def _field_columns(groups: Iterable[Iterable[Released]]) -> list[str]:
    names: set[str] = set()
    for g in groups:
        for r in g:
            names.update(r.fields)
    return list(_ordered(dict.fromkeys(names)))


def _cell(value: Any) -> Cell:
    if value is None or isinstance(value, str | int):
        return value
    return json.dumps(value, ensure_ascii=False)


def _overlap_grid(rows: Sequence[OverlapRow]) -> Grid:
    fcols = _field_columns(o.partner for o in rows)
    cols = ["my id", "my name", "my domain", "my population", "their population"]
    cols += [f"their {f}" for f in fcols] + ["note"]
    out: list[list[Cell]] = []
    for o in sorted(rows, key=lambda o: (o.mine.population, (o.mine.name or "").casefold())):
        m = o.mine
        mine: list[Cell] = [
            m.local_id,
            m.name if m.decrypted else UNDECRYPTABLE,
            m.domain,
            m.population,
        ]
        for rel in o.partner or [Released("", "no-fields")]:
            out.append(
                [
                    *mine,
                    rel.population,
                    *(_cell(rel.fields.get(f)) for f in fcols),
                    rel.note,
                ]
            )
    return Grid("overlaps", "Overlaps: my accounts the partner also has", cols, out)


def _white_space_grid(rows: Sequence[Released]) -> Grid:
    fcols = _field_columns([rows])
    cols = ["their population", *fcols, "note"]
    ordered = sorted(rows, key=lambda r: (r.population, str(r.fields.get("name", "")).casefold()))
    out: list[list[Cell]] = [
        [r.population, *(_cell(r.fields.get(f)) for f in fcols), r.note] for r in ordered
    ]
    return Grid(
        "white_space",
        "White space: the partner's accounts that match none of mine",
        cols,
        out,
        "no white space (the partner shares no population in full, or all of it matches)",
    )


def _lookup_grid(rows: Sequence[LookupRow]) -> Grid:
    fcols = _field_columns(lk.partner for lk in rows)
    cols = ["domain", "their population", *(f"their {f}" for f in fcols), "note"]
    out: list[list[Cell]] = []
    for lk in rows:
        if not lk.partner:
            out.append([lk.domain, None, *(None for _ in fcols), "not in the partner's lists"])
        for rel in lk.partner:
            out.append(
                [lk.domain, rel.population, *(_cell(rel.fields.get(f)) for f in fcols), rel.note]
            )
    return Grid("lookup", "Lookup", cols, out)


def _summary_long_grid(s: protocol.SummaryReport) -> Grid:
    mine = {p.slug: p for p in s.mine}
    theirs = {p.slug: p for p in s.theirs}
    cols = ["my population", "my records", "their population", "their records", "matched"]
    cols.append("display")
    out: list[list[Cell]] = []
    for c in s.cells:
        mp, tp = mine.get(c.mine), theirs.get(c.theirs)
        out.append(
            [
                c.mine,
                mp.records if mp else None,
                c.theirs,
                tp.records if tp else None,
                c.matched,
                c.display,
            ]
        )
    return Grid("summary", "Account mapping", cols, out)


def _fields_text(fields: Mapping[str, Any]) -> str:
    return "; ".join(f"{k}={v}" for k, v in fields.items() if v not in (None, ""))


def _ecosystem_grid(r: EcosystemReport) -> Grid:
    cols = ["my id", "name", "domain", "my populations", "partners", "partner"]
    cols += ["their populations", "their fields", "note"]
    out: list[list[Cell]] = []
    for a in r.rows:
        for h in a.partners:
            out.append(
                [
                    a.local_id,
                    a.name,
                    a.domain,
                    ", ".join(a.populations),
                    len(a.partners),
                    h.partner,
                    ", ".join(h.populations),
                    _fields_text(h.fields),
                    "; ".join(h.notes) or None,
                ]
            )
    return Grid("ecosystem", "Ecosystem: my accounts across partners", cols, out)


def _grids(report: Report) -> list[Grid]:
    out = []
    if report.overlaps is not None:
        out.append(_overlap_grid(report.overlaps))
    if report.white_space is not None:
        out.append(_white_space_grid(report.white_space))
    if report.lookup is not None:
        out.append(_lookup_grid(report.lookup))
    return out


# --------------------------------------------------------------------------- text

_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")


def _clean(value: Cell) -> str:
    """Terminal-safe text: a partner's field must not drive the terminal (escape codes)."""
    return "" if value is None else _CONTROL.sub("\ufffd", str(value))


def _header_lines(report: AnyReport) -> list[str]:
    if isinstance(report, EcosystemReport):
        lines = [f"Ecosystem of {len(report.partnerships)} partnership(s)"]
        lines += [
            f"  {c.partner_name} ({c.partner}), partnership {c.partnership_id}: "
            f"policy versions {c.versions_text()}"
            for c in report.partnerships
        ]
        lines.append(f"Generated {report.generated_at:%Y-%m-%d %H:%M:%S %Z}")
        return lines
    c = report.context
    return [
        f"{c.partner_name} ({c.partner}) · partnership {c.partnership_id}",
        f"Policy versions: {c.versions_text()} · generated {c.generated_at:%Y-%m-%d %H:%M:%S %Z}",
    ]


def _footer_lines(report: AnyReport) -> list[str]:
    lines = list(report.notes)
    if report.undecryptable:
        lines.append(
            f"{report.undecryptable} payload(s) could not be decrypted: a key changed since "
            "they were uploaded; the side that rotated its key must re-sync."
        )
    return lines


def render_table(report: AnyReport, console: Any) -> None:
    """Print the report as rich tables on `console` (a `rich.console.Console`)."""
    from rich.table import Table
    from rich.text import Text

    def t(value: Cell) -> Text:
        return Text(_clean(value))

    for line in _header_lines(report):
        console.print(Text(_clean(line), style="bold"))
    if isinstance(report, Report) and report.summary is not None:
        s = report.summary
        table = Table(title="Account mapping: my populations by theirs", title_justify="left")
        table.add_column(Text("mine \\ theirs"))
        for p in s.theirs:
            table.add_column(t(p.slug + (f" ({p.records})" if p.records is not None else "")))
        cells = {(c.mine, c.theirs): c for c in s.cells}
        for m in s.mine:
            label = m.slug + (f" ({m.records})" if m.records is not None else "")
            row = [t(label)]
            for p in s.theirs:
                c = cells.get((m.slug, p.slug))
                if c is None:
                    row.append(Text(""))
                else:
                    row.append(Text(_clean(c.display), style="" if c.matched else "dim"))
            table.add_row(*row)
        console.print(table)
        console.print(
            Text(
                f"Cells under {s.min_count} show as <{s.min_count}; '—': a population "
                f"under {s.min_population} records.",
                style="dim",
            )
        )
    grids = [_ecosystem_grid(report)] if isinstance(report, EcosystemReport) else _grids(report)
    for g in grids:
        table = Table(title=f"{g.title} ({_count_text(g)})", title_justify="left")
        keep = _compact_columns(g)
        for i in keep:
            table.add_column(t(g.columns[i]), no_wrap=g.columns[i] in _NO_WRAP)
        for grid_row in g.rows:
            table.add_row(*(t(grid_row[i]) for i in keep))
        if g.rows:
            console.print(table)
        else:
            console.print(Text(f"{g.title}: {g.empty}"))
    for line in _footer_lines(report):
        console.print(Text(_clean(line), style="yellow"))


_NO_WRAP: Final = frozenset({"my id", "my population", "their population", "partners"})


def _compact_columns(g: Grid) -> list[int]:
    """Columns worth a terminal's width: no all-empty column, and no "their domain" that
    repeats "my domain" on every row (a domain match). CSV and JSON keep them all."""
    keep = [i for i in range(len(g.columns)) if any(r[i] not in (None, "") for r in g.rows)]
    cols = g.columns
    if "my domain" in cols and "their domain" in cols:
        mine, theirs = cols.index("my domain"), cols.index("their domain")
        if theirs in keep and all(r[theirs] in (None, "", r[mine]) for r in g.rows):
            keep.remove(theirs)
    return keep or list(range(len(cols)))


def _count_text(g: Grid) -> str:
    return f"{len(g.rows)} row" + ("" if len(g.rows) == 1 else "s")


# --------------------------------------------------------------------------- CSV

_FORMULA_START: Final = ("=", "+", "-", "@", "\t", "\r")


def neutralise_csv_cell(value: Cell) -> str:
    """OWASP CSV injection: a cell a spreadsheet would evaluate gets a leading `'`."""
    text = "" if value is None else str(value)
    return "'" + text if text.startswith(_FORMULA_START) else text


def to_csv(report: AnyReport) -> str:
    """One flat table with a header row; context columns first; formulas neutralised.

    A full report (several sections) is not one table: ask for one report at a time.
    """
    if isinstance(report, EcosystemReport):
        grid = _ecosystem_grid(report)
        versions = {c.partner: c.policy_versions for c in report.partnerships}
        ids = {c.partner: c.partnership_id for c in report.partnerships}
        pcol = grid.columns.index("partner")
        head = ["partnership_id", "policy_version_mine", "policy_version_partner"]
        rows: list[list[Cell]] = []
        for r in grid.rows:
            pv = versions.get(str(r[pcol]))
            rows.append(
                [
                    str(ids.get(str(r[pcol]), "")),
                    pv.mine if pv else None,
                    pv.partner if pv else None,
                    *r,
                ]
            )
        return _write_csv([*head, *(_csv_name(c) for c in grid.columns)], rows)
    if report.summary is not None and report.kind != "summary":
        raise ValueError("CSV holds one report: ask for summary, overlaps or white space alone")
    grid = _summary_long_grid(report.summary) if report.summary is not None else _grids(report)[0]
    c = report.context
    pv = c.policy_versions
    prefix: list[Cell] = [
        c.partner,
        str(c.partnership_id),
        pv.mine if pv else None,
        pv.partner if pv else None,
    ]
    head = ["partner", "partnership_id", "policy_version_mine", "policy_version_partner"]
    return _write_csv(
        [*head, *(_csv_name(col) for col in grid.columns)], [[*prefix, *r] for r in grid.rows]
    )


def _csv_name(column: str) -> str:
    return column.replace(" ", "_")


def _write_csv(header: list[str], rows: Iterable[Sequence[Cell]]) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\r\n")
    w.writerow([neutralise_csv_cell(h) for h in header])
    for r in rows:
        w.writerow([neutralise_csv_cell(v) for v in r])
    return buf.getvalue()


# --------------------------------------------------------------------------- JSON


def _population_json(p: protocol.ReportPopulation) -> dict[str, Any]:
    return {
        "slug": p.slug,
        "display_name": p.display_name,
        "kind": p.kind.value if p.kind else None,
        "records": p.records,
    }


def _summary_json(s: protocol.SummaryReport) -> dict[str, Any]:
    return {
        "mine": [_population_json(p) for p in s.mine],
        "theirs": [_population_json(p) for p in s.theirs],
        "cells": [
            {"mine": c.mine, "theirs": c.theirs, "matched": c.matched, "display": c.display}
            for c in s.cells
        ],
        "min_count": s.min_count,
        "min_population": s.min_population,
    }


def _versions_json(pv: protocol.PolicyVersions | None) -> dict[str, int] | None:
    return {"mine": pv.mine, "partner": pv.partner} if pv else None


def report_json(report: AnyReport) -> dict[str, Any]:
    """The JSON document as a dict (see the module docstring for its keys)."""
    if isinstance(report, EcosystemReport):
        return {
            "blindmap_report": JSON_VERSION,
            "report": "ecosystem",
            "generated_at": report.generated_at.isoformat(),
            "partnerships": [
                {**c.as_json(), "policy_versions": _versions_json(c.policy_versions)}
                for c in report.partnerships
            ],
            "accounts": [
                {
                    "id": a.local_id,
                    "name": a.name,
                    "domain": a.domain,
                    "populations": a.populations,
                    "partners": [
                        {
                            "partner": h.partner,
                            "populations": h.populations,
                            "fields": h.fields,
                            "notes": h.notes,
                        }
                        for h in a.partners
                    ],
                }
                for a in report.rows
            ],
            "undecryptable": report.undecryptable,
            "notes": report.notes,
        }
    c = report.context
    doc: dict[str, Any] = {
        "blindmap_report": JSON_VERSION,
        "report": report.kind,
        "generated_at": c.generated_at.isoformat(),
        "partnership": c.as_json(),
        "policy_versions": _versions_json(c.policy_versions),
    }
    if report.summary is not None:
        doc["summary"] = _summary_json(report.summary)
    if report.overlaps is not None:
        doc["overlaps"] = [
            {"mine": o.mine.as_json(), "partner": [r.as_json() for r in o.partner]}
            for o in report.overlaps
        ]
    if report.white_space is not None:
        doc["white_space"] = [r.as_json() for r in report.white_space]
    if report.lookup is not None:
        doc["lookup"] = [
            {"domain": lk.domain, "found": lk.found, "partner": [r.as_json() for r in lk.partner]}
            for lk in report.lookup
        ]
    doc["undecryptable"] = report.undecryptable
    doc["notes"] = report.notes
    return doc


def to_json(report: AnyReport) -> str:
    return json.dumps(report_json(report), indent=2, ensure_ascii=False) + "\n"


# --------------------------------------------------------------------------- HTML

_CSS: Final = """
:root{--ink:#1f2937;--muted:#6b7280;--line:#e5e7eb;--accent:37,99,235}
*{box-sizing:border-box}
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,Helvetica,Arial,sans-serif;
color:var(--ink);margin:0;background:#f9fafb}
main{max-width:1360px;margin:0 auto;padding:28px 32px 48px}
header{background:#fff;border:1px solid var(--line);border-radius:10px;padding:18px 22px;
margin-bottom:24px}
h1{font-size:22px;margin:0 0 6px}
h2{font-size:17px;margin:28px 0 10px}
.meta{display:flex;flex-wrap:wrap;gap:6px 22px;color:var(--muted);margin:0}
.meta b{color:var(--ink);font-weight:600}
section{background:#fff;border:1px solid var(--line);border-radius:10px;padding:4px 22px 18px;
margin-bottom:22px;overflow-x:auto}
table{border-collapse:collapse;width:100%;margin-top:6px}
th,td{padding:6px 9px;font-size:13.5px;border-bottom:1px solid var(--line);text-align:left;
vertical-align:top}
th{font-weight:600;background:#f3f4f6}
td{overflow-wrap:anywhere}
td.nw{white-space:nowrap;overflow-wrap:normal}
tbody tr:hover td{background:#f9fafb}
table.heat{width:auto}
table.heat td{text-align:center;min-width:96px;font-variant-numeric:tabular-nums;
font-weight:600;border:2px solid #fff}
table.heat th.row{text-align:right}
table.heat td.sup{color:var(--muted);font-weight:400;font-style:italic;
background:repeating-linear-gradient(45deg,#f3f4f6 0 5px,#e5e7eb 5px 10px)}
td.num{text-align:right;font-variant-numeric:tabular-nums}
.small{color:var(--muted);font-size:12.5px}
.legend{display:inline-flex;align-items:center;gap:8px;margin-right:18px}
.swatch{display:inline-block;width:34px;height:14px;border-radius:3px;vertical-align:middle}
.ramp{background:linear-gradient(90deg,rgba(var(--accent),.10),rgba(var(--accent),.9))}
.hatch{background:repeating-linear-gradient(45deg,#f3f4f6 0 5px,#e5e7eb 5px 10px)}
.warn{background:#fffbeb;border:1px solid #fde68a;color:#92400e;border-radius:8px;
padding:8px 12px;margin:8px 0}
.bad{color:#b91c1c}
.empty{color:var(--muted);font-style:italic}
footer{color:var(--muted);font-size:12px;margin-top:30px}
"""


def _e(value: Any) -> str:
    return html.escape("" if value is None else str(value), quote=True)


def _heat_html(s: protocol.SummaryReport) -> str:
    cells = {(c.mine, c.theirs): c for c in s.cells}
    peak = max((c.matched or 0 for c in s.cells), default=0)

    def label(p: protocol.ReportPopulation) -> str:
        size = (
            f'<br><span class="small">{_e(p.records)} records</span>'
            if p.records is not None
            else ""
        )
        return f"{_e(p.display_name or p.slug)}{size}"

    out = ['<table class="heat"><thead><tr><th>mine \\ theirs</th>']
    out += [f'<th scope="col">{label(p)}</th>' for p in s.theirs]
    out.append("</tr></thead><tbody>")
    for m in s.mine:
        out.append(f'<tr><th scope="row" class="row">{label(m)}</th>')
        for p in s.theirs:
            c = cells.get((m.slug, p.slug))
            if c is None:
                out.append('<td class="sup" title="not reported">·</td>')
            elif c.matched is None:
                why = (
                    f"suppressed: fewer than {s.min_count} matches"
                    if c.display.startswith("<")
                    else f"a population under {s.min_population} records"
                )
                out.append(f'<td class="sup" title="{_e(why)}">{_e(c.display)}</td>')
            else:
                alpha = 0.08 + 0.82 * (c.matched / peak if peak else 0.0)
                ink = "#fff" if alpha > 0.55 else "var(--ink)"
                out.append(
                    f'<td style="background:rgba(var(--accent),{alpha:.2f});color:{ink}" '
                    f'title="{_e(m.slug)} \u00d7 {_e(p.slug)}: {c.matched}">{_e(c.display)}</td>'
                )
        out.append("</tr>")
    out.append("</tbody></table>")
    out.append(
        '<p class="small"><span class="legend"><span class="swatch ramp"></span>'
        f"matched accounts, 0 → {peak}</span>"
        '<span class="legend"><span class="swatch hatch"></span>'
        f"suppressed (&lt;{s.min_count} matches, or '—': a population under "
        f"{s.min_population} records)</span></p>"
    )
    return "".join(out)


def _grid_html(g: Grid) -> str:
    if not g.rows:
        return f'<p class="empty">{_e(g.empty)}</p>'
    keep = _compact_columns(g)
    out = ["<table><thead><tr>"]
    out += [f'<th scope="col">{_e(g.columns[i])}</th>' for i in keep]
    out.append("</tr></thead><tbody>")
    for row in g.rows:
        out.append("<tr>")
        for i in keep:
            v = row[i]
            if isinstance(v, int):
                out.append(f'<td class="num">{v}</td>')
            elif v == UNDECRYPTABLE:
                out.append(f'<td class="bad">{_e(v)}</td>')
            elif g.columns[i] in _NO_WRAP:
                out.append(f'<td class="nw">{_e(v)}</td>')
            else:
                out.append(f"<td>{_e(v)}</td>")
        out.append("</tr>")
    out.append("</tbody></table>")
    return "".join(out)


def to_html(report: AnyReport) -> str:
    """One self-contained HTML page (inline CSS, no scripts, no external assets)."""
    if isinstance(report, EcosystemReport):
        title = "Blindmap ecosystem report"
        meta = [
            f"<span>Generated <b>{_e(f'{report.generated_at:%Y-%m-%d %H:%M:%S %Z}')}</b></span>"
        ]
        for c in report.partnerships:
            meta.append(
                f"<span>{_e(c.partner_name)} (<b>{_e(c.partner)}</b>): policy versions "
                f"<b>{_e(c.versions_text())}</b></span>"
            )
        sections = [(_ecosystem_grid(report).title, _grid_html(_ecosystem_grid(report)))]
    else:
        c = report.context
        title = f"Blindmap report: {c.partner_name}"
        meta = [
            f"<span>Partner <b>{_e(c.partner_name)}</b> ({_e(c.partner)})</span>",
            f"<span>Partnership <b>{_e(c.partnership_id)}</b></span>",
            f"<span>Policy versions <b>{_e(c.versions_text())}</b></span>",
            f"<span>Generated <b>{_e(f'{c.generated_at:%Y-%m-%d %H:%M:%S %Z}')}</b></span>",
        ]
        sections = []
        if report.summary is not None:
            sections.append(("Account mapping", _heat_html(report.summary)))
        for g in _grids(report):
            sections.append((f"{g.title} ({_count_text(g)})", _grid_html(g)))
    warnings = "".join(f'<div class="warn">{_e(w)}</div>' for w in _footer_lines(report))
    body = "".join(f"<section><h2>{_e(h)}</h2>{content}</section>" for h, content in sections)
    return (
        "<!DOCTYPE html>\n"
        '<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width,initial-scale=1">'
        '<meta http-equiv="Content-Security-Policy" content="default-src \'none\'; '
        "style-src 'unsafe-inline'\">"
        f"<title>{_e(title)}</title><style>{_CSS}</style></head><body><main>"
        f'<header><h1>{_e(title)}</h1><p class="meta">{"".join(meta)}</p>{warnings}</header>'
        f"{body}"
        "<footer>Decrypted on this machine by the blindmap client; the escrow relayed "
        "only ciphertext and enforced both partners' policies. Confidential: share only "
        "as your agreement with the partner allows.</footer>"
        "</main></body></html>\n"
    )
