"""Binary overlaps pages (docs/protocol.md §9.1): the escrow's bulk-export representation
of `protocol.OverlapPage`, with the sealed payloads as raw bytes instead of base64url in
JSON. The escrow sends it when asked with ``Accept: application/vnd.blindmap.overlaps+binary``;
the SDK's whole-report export (`reports.overlap_rows`) asks for it.

One module holds both directions so that the format is written down once: the escrow
encodes with :class:`OverlapPageWriter`, the SDK decodes with :func:`decode_overlap_page`.
"""

from __future__ import annotations

import json
import struct
import uuid
from dataclasses import dataclass
from typing import Any

from blindmap import protocol

BINARY_OVERLAPS = "application/vnd.blindmap.overlaps+binary"
MAGIC = b"BMO1"
_NULL = 0xFFFFFFFF
_U32 = struct.Struct(">I")
_U16 = struct.Struct(">H")
_ITEM_HEAD = struct.Struct(">HI")  # my population index, self-sealed length
_PARTNER_HEAD = struct.Struct(">HH")  # release index, ref length


class BinaryPageError(ValueError):
    """A binary page that does not follow docs/protocol.md §9.1 (names the byte offset)."""


# The two per-item shapes below are not frozen: a decoded 1M report makes 155k of each,
# and a frozen dataclass's __init__ (object.__setattr__ per field) costs twice a plain
# one's (≈ 1.0 against 0.55 µs for five fields: ≈ 0.15 s per 155k-item report).
@dataclass(slots=True)
class RawPartnerRecord:
    """`protocol.PartnerRecord` with `sealed` as bytes."""

    population: str
    ref: str
    sealed: bytes | None
    fields: list[str]
    withheld: str | None


@dataclass(slots=True)
class RawOverlapItem:
    """`protocol.OverlapItem` with `self_sealed` as bytes."""

    ref: str
    population: str
    self_sealed: bytes
    partner: list[RawPartnerRecord]


@dataclass(frozen=True, slots=True)
class RawOverlapPage:
    """`protocol.OverlapPage` with raw payloads."""

    partnership_id: uuid.UUID
    items: list[RawOverlapItem]
    next_cursor: str | None
    policy_versions: protocol.PolicyVersions


class _Release(protocol._Response):
    population: str
    fields: list[str]
    withheld: str | None


class _Header(protocol._Response):
    partnership_id: uuid.UUID
    next_cursor: str | None
    policy_versions: protocol.PolicyVersions
    items: int
    populations: list[str]
    releases: list[_Release]


class OverlapPageWriter:
    """Builds one binary page. Items are appended as the escrow reads them; the header
    (with the counts, the cursor and the tables the items index into) goes in front at
    the end. A partner record's population, `fields` and `withheld` are the same for a
    whole partner list (or are empty for a record without a payload), so each distinct
    triple is written once in the header and referenced by index."""

    __slots__ = ("_buf", "_count", "_pops", "_releases")

    def __init__(self) -> None:
        self._buf = bytearray()
        self._count = 0
        self._pops: dict[str, int] = {}
        self._releases: dict[tuple[str, tuple[str, ...], str | None], int] = {}

    def population(self, slug: str) -> int:
        """Index of one of my populations in the header."""
        return self._pops.setdefault(slug, len(self._pops))

    def release(self, population: str, fields: tuple[str, ...], withheld: str | None) -> int:
        """Index of a (population, fields, withheld) triple in the header."""
        return self._releases.setdefault((population, fields, withheld), len(self._releases))

    def item(
        self,
        ref: str,
        population: int,
        self_sealed: bytes,
        partner: list[tuple[int, str, bytes | None]],
    ) -> None:
        """One of my records: `partner` holds (release index, their ref, their payload)."""
        buf = self._buf
        rb = ref.encode()
        buf += _U16.pack(len(rb))
        buf += rb
        buf += _ITEM_HEAD.pack(population, len(self_sealed))
        buf += self_sealed
        buf += _U32.pack(len(partner))
        for rel, their_ref, sealed in partner:
            tb = their_ref.encode()
            buf += _PARTNER_HEAD.pack(rel, len(tb))
            buf += tb
            if sealed is None:
                buf += _U32.pack(_NULL)
            else:
                buf += _U32.pack(len(sealed))
                buf += sealed
        self._count += 1

    def __len__(self) -> int:
        return self._count

    def body(
        self, partnership_id: uuid.UUID, next_cursor: str | None, policy_versions: dict[str, int]
    ) -> bytes:
        if len(self._pops) > 0xFFFF or len(self._releases) > 0xFFFF:
            raise ValueError("too many populations on one page")  # pragma: no cover
        header = json.dumps(
            {
                "partnership_id": str(partnership_id),
                "next_cursor": next_cursor,
                "policy_versions": policy_versions,
                "items": self._count,
                "populations": list(self._pops),
                "releases": [
                    {"population": p, "fields": list(f), "withheld": w}
                    for p, f, w in self._releases
                ],
            },
            separators=(",", ":"),
        ).encode()
        return b"".join((MAGIC, _U32.pack(len(header)), header, self._buf))


def decode_overlap_page(body: bytes) -> RawOverlapPage:
    """Parse a binary overlaps page; :class:`BinaryPageError` names what is wrong and where."""
    if body[:4] != MAGIC or len(body) < 8:
        raise BinaryPageError(f"not a binary overlaps page: it must start with {MAGIC!r}")
    (hlen,) = _U32.unpack_from(body, 4)
    if 8 + hlen > len(body):
        raise BinaryPageError(f"the header's length ({hlen} bytes) runs past the end of the body")
    try:
        head = _Header.model_validate_json(body[8 : 8 + hlen])
    except ValueError as exc:
        raise BinaryPageError(f"bad header: {exc}") from None
    pops = head.populations
    rels = [(r.population, r.fields, r.withheld) for r in head.releases]
    items: list[RawOverlapItem] = []
    add = items.append
    u16, u32, item_head, partner_head = (
        _U16.unpack_from,
        _U32.unpack_from,
        _ITEM_HEAD.unpack_from,
        _PARTNER_HEAD.unpack_from,
    )
    o = 8 + hlen
    n = len(body)
    at = o
    try:
        for _ in range(head.items):
            at = o
            (ln,) = u16(body, o)
            o += 2
            ref = body[o : o + ln].decode()
            o += ln
            pi, ln = item_head(body, o)
            o += 6
            self_sealed = body[o : o + ln]
            o += ln
            (count,) = u32(body, o)
            o += 4
            partner: list[RawPartnerRecord] = []
            for _ in range(count):
                ri, ln = partner_head(body, o)
                o += 4
                their_ref = body[o : o + ln].decode()
                o += ln
                (ln,) = u32(body, o)
                o += 4
                if ln == _NULL:
                    sealed = None
                else:
                    sealed = body[o : o + ln]
                    o += ln
                pop, fields, withheld = rels[ri]
                partner.append(RawPartnerRecord(pop, their_ref, sealed, fields, withheld))
            if o > n:
                raise BinaryPageError(f"item {len(items) + 1} at byte {at} runs past the end")
            add(RawOverlapItem(ref, pops[pi], self_sealed, partner))
    except (struct.error, IndexError, UnicodeDecodeError) as exc:
        raise BinaryPageError(
            f"item {len(items) + 1} at byte {at} is malformed ({type(exc).__name__})"
        ) from None
    if o != n:
        raise BinaryPageError(f"{n - o} bytes after the last item (byte {o})")
    return RawOverlapPage(head.partnership_id, items, head.next_cursor, head.policy_versions)


def from_json_page(page: protocol.OverlapPage) -> RawOverlapPage:
    """A JSON page in the raw shape (an escrow that answered JSON to the binary request)."""
    unb64 = protocol.unb64url
    items = []
    for it in page.items:
        partner = [
            RawPartnerRecord(
                r.population,
                r.ref,
                None if r.sealed is None else unb64(r.sealed),
                list(r.fields),
                r.withheld,
            )
            for r in it.partner
        ]
        items.append(RawOverlapItem(it.ref, it.population, unb64(it.self_sealed), partner))
    return RawOverlapPage(page.partnership_id, items, page.next_cursor, page.policy_versions)


def as_json_items(page: RawOverlapPage) -> list[dict[str, Any]]:
    """The items as `protocol.OverlapItem` JSON (base64url payloads): for comparisons."""
    b64 = protocol.b64url
    return [
        {
            "ref": it.ref,
            "population": it.population,
            "self_sealed": b64(it.self_sealed),
            "partner": [
                {
                    "population": r.population,
                    "ref": r.ref,
                    "sealed": None if r.sealed is None else b64(r.sealed),
                    "fields": list(r.fields),
                    "withheld": r.withheld,
                }
                for r in it.partner
            ],
        }
        for it in page.items
    ]
