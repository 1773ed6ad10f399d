"""`blindmap sync`: from a CRM export (CSV) to committed uploads, one per partnership.

Pipeline, per DESIGN §3 and docs/protocol.md §8:

1. :func:`read_accounts` streams the CSV once (UTF-8 with or without BOM, CRLF, quoted
   newlines), maps its columns (Salesforce and HubSpot headers are recognised; a
   column map overrides), splits it into populations, normalizes the website to a
   domain key and drops rows without one, and duplicates, each with a reason and its
   line number. Nothing here touches the network.
2. :func:`build_upload` turns one population's accounts into NDJSON chunks for one
   partnership: pseudonymous ref, domain (and name) tokens, a self-sealed copy of id,
   name and domain, and a partner-sealed payload of exactly the fields the policy
   allows. Only tokens, refs and ciphertext are written.
3. :func:`sync` does the rest against the escrow: for each active partnership it
   creates the upload with a manifest that leaves the chunk count and digest for the
   commit (docs/protocol.md §8.1), sends each chunk as soon as it is built (the next one
   is sealed while two are in flight), and commits with the count and digest.

Resume: when the build ends, the chunks the escrow has not acknowledged yet are staged in
``<key file dir>/uploads/<partnership>-<population>/`` (0700 directory, 0600 files) with
a small ``state.json`` naming the upload id, every chunk's SHA-256 (the acknowledged ones
keep no file), the digest and a fingerprint of everything that determines the chunk bytes
except the random nonces (input file hash, options, policy fields, key epochs, public
keys, normalizer version). A later run whose fingerprint matches reuses those exact chunk
bytes and the same upload id, sending only the chunks missing from the escrow's
``received_chunks``; any other run, or one stopped before its build ended, aborts the old
staged upload and starts afresh. The directory is deleted once the upload is committed.

Memory: the accounts that survive reading are held once (a compact tuple per row, with
repeated categorical values shared); chunks are built one at a time and held only until
the escrow has them (a few at a time), never all together.
"""

from __future__ import annotations

import csv
import hashlib
import io
import itertools
import json
import operator
import os
import re
import shlex
import shutil
import struct
import time
import uuid
from collections import Counter, deque
from collections.abc import Callable, Generator, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from itertools import repeat
from operator import attrgetter
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, Literal, NamedTuple

from blindmap import _parallel, crypto, normalize, protocol
from blindmap._errors import (
    APIConnectionError,
    BlindmapError,
    ConflictError,
    InternalServerError,
    NotFoundError,
    PermissionDeniedError,
    ValidationError,
)

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

    from blindmap._client import Client
    from blindmap.policy import Policy

__all__ = [
    "CANONICAL_FIELDS",
    "DEFAULT_CHUNK_FORMAT",
    "DEFAULT_CHUNK_SIZE",
    "DEFAULT_SEND_AHEAD",
    "HEADER_ALIASES",
    "MAX_CHUNK_BYTES",
    "MAX_FIELD_CHARS",
    "SKIP_REASONS",
    "Account",
    "Chunk",
    "ProgressEvent",
    "ReadResult",
    "Skipped",
    "SyncError",
    "SyncInputError",
    "SyncReport",
    "UnknownPartnerError",
    "UploadResult",
    "build_upload",
    "guess_population_kind",
    "parse_mapping",
    "read_accounts",
    "sync",
    "upload_digest",
]

DEFAULT_CHUNK_SIZE: Final = 10_000
MAX_CHUNK_BYTES: Final = 4 * 1024 * 1024
DEFAULT_SEND_AHEAD: Final = 2
"""Chunks in flight at once. Two: while the escrow stores one chunk the next is already on
its way, which kept PostgreSQL and the escrow's Python busy at once (1M records, both
companies syncing: send 8.7-10.6 -> 7.9-8.5 s per side); a SQLite-backed escrow, whose
writes are serial, ran the same with one or two (BENCHMARKS.md, "session 6")."""
"""A chunk closes at this size even below `chunk_size` records (the escrow takes 8 MiB)."""
ChunkFormat = Literal["ndjson", "binary"]
DEFAULT_CHUNK_FORMAT: Final[ChunkFormat] = "binary"
"""What :func:`sync` sends: the compact binary chunks (docs/protocol.md §8.3), about half
the bytes of NDJSON and several times cheaper for the escrow to parse. NDJSON (§8.2)
stays the reference format for hand-written clients; :func:`build_upload` defaults to it."""
MAX_FIELD_CHARS: Final = 200
"""Cells are cut to this many characters, so every sealed payload stays far below the
escrow's per-payload limit (4 KiB by default)."""
_TRANSIENT_ROUNDS: Final = 5
_sleep: Callable[[float], None] = time.sleep  # test seam
_STATE_VERSION: Final = 2  # 2: chunk_count and digest null until the build ends

CANONICAL_FIELDS: Final = (
    "id",
    "name",
    "website",
    "owner",
    "owner_email",
    "stage",
    "type",
    "industry",
    "country",
)
"""Columns `sync` understands (`--column-map` keys). Sealable fields are these except
`website`, plus `domain` (the normalized domain key)."""

# Header spellings, compared lowercased with everything but letters and digits removed.
# Order matters: earlier aliases win; for `website` every present alias is a fallback in
# this order (HubSpot's cleaned "Company Domain Name" first, then its "Website URL").
HEADER_ALIASES: Final[dict[str, tuple[str, ...]]] = {
    "id": ("accountid", "recordid", "companyid", "hsobjectid", "id", "accountnumber"),
    "name": ("accountname", "companyname", "name", "company", "account", "organization"),
    "website": (
        "companydomainname",
        "website",
        "websiteurl",
        "companywebsite",
        "domain",
        "domainname",
        "url",
        "webaddress",
        "web",
    ),
    "owner": ("accountowner", "companyowner", "owner", "ownername", "accountownername"),
    "owner_email": ("accountowneremail", "owneremail", "companyowneremail", "ownerdotemail"),
    "stage": ("stage", "opportunitystage", "stagename", "dealstage", "lifecyclestage"),
    "type": ("type", "accounttype", "companytype"),
    "industry": ("industry",),
    "country": ("billingcountry", "country", "countryregion", "billingcountryregion"),
}

SkipReasonName = str
SKIP_REASONS: Final = (
    "no-website",
    *(r for r in normalize.SKIP_REASONS if r != "empty"),
    "duplicate",
    "duplicate-id",
    "unmapped-population",
)
"""Why a row is not uploaded: no website cell, a normalizer reason (free-mail, platform,
...), the same domain (or the same id) earlier in the same population, or (with
`population_column`) a value the population map does not name."""


class SyncError(BlindmapError):
    """`sync` cannot proceed (key mismatch, no partnership to sync with, ...)."""


class UnknownPartnerError(SyncError):
    """A partner named on the command line has no active partnership with us."""


class SyncInputError(SyncError):
    """The input file cannot be read: the message starts with ``path:line:``."""

    def __init__(self, path: str | os.PathLike[str], line: int | None, message: str) -> None:
        self.path = str(path)
        self.line = line
        self.reason = message
        where = f"{self.path}:{line}" if line is not None else self.path
        super().__init__(f"{where}: {message}")


# --------------------------------------------------------------------------- reading


class Account(NamedTuple):
    """One row kept for upload. `values` align with `ReadResult.field_names`."""

    line: int
    local_id: str
    name: str
    domain: str
    values: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Skipped:
    """A row not uploaded. `row` (the raw cells) is kept only when asked for."""

    line: int
    reason: str
    population: str | None
    detail: str = ""
    row: tuple[str, ...] | None = None


@dataclass
class ReadResult:
    """What :func:`read_accounts` found in a file."""

    path: Path
    header: list[str]
    columns: dict[str, list[str]]
    """Canonical field → the header(s) read for it (website may have fallbacks)."""
    field_names: tuple[str, ...]
    """Names of `Account.values`: the optional canonical fields present in the file."""
    accounts: dict[str, list[Account]]
    skipped: list[Skipped]
    rows_read: int
    input_sha256: str
    options: dict[str, Any]

    @property
    def skipped_counts(self) -> Counter[str]:
        return Counter(s.reason for s in self.skipped)

    @property
    def populations(self) -> list[str]:
        return list(self.accounts)

    def name_keys(self, population: str) -> list[str | None]:
        """Name keys of a population's accounts (computed once, shared by partnerships)."""
        cache: dict[str, list[str | None]] = self.__dict__.setdefault("_name_keys", {})
        if population not in cache:
            name_key = normalize.name
            cache[population] = [name_key(a.name) for a in self.accounts.get(population, [])]
        return cache[population]

    def available_fields(self) -> tuple[str, ...]:
        """Fields a policy may ask to seal that this file can supply."""
        out = ["domain"]
        if "id" in self.columns:
            out.append("id")
        if "name" in self.columns:
            out.append("name")
        out.extend(self.field_names)
        return tuple(out)


def _header_key(text: str) -> str:
    return re.sub(r"[^0-9a-z]", "", text.casefold())


def parse_mapping(text: str | None, *, what: str = "mapping") -> dict[str, str]:
    """Parse ``a=B,c="D E"`` (shell-style quotes) into ``{"a": "B", "c": "D E"}``."""
    if not text:
        return {}
    lexer = shlex.shlex(text, posix=True)
    lexer.whitespace = ","
    lexer.whitespace_split = True
    lexer.commenters = ""
    out: dict[str, str] = {}
    try:
        items = list(lexer)
    except ValueError as exc:
        raise SyncError(f"bad {what} {text!r}: {exc}") from None
    for item in items:
        key, sep, value = item.partition("=")
        key, value = key.strip(), value.strip()
        if not sep or not key:
            raise SyncError(f"bad {what} entry {item!r}: expected KEY=VALUE")
        if key in out:
            raise SyncError(f"{what} names {key!r} twice")
        out[key] = value
    return out


def _detect_columns(
    header: list[str], column_map: Mapping[str, str], path: Path
) -> dict[str, list[int]]:
    """Canonical field → column indexes (website may have several, in priority order)."""
    unknown = sorted(set(column_map) - set(CANONICAL_FIELDS))
    if unknown:
        raise SyncError(
            f"--column-map: unknown field(s) {', '.join(unknown)}; "
            f"known: {', '.join(CANONICAL_FIELDS)}"
        )
    exact = {h: i for i, h in reversed(list(enumerate(header)))}
    by_key: dict[str, int] = {}
    for i, h in enumerate(header):
        by_key.setdefault(_header_key(h), i)
    out: dict[str, list[int]] = {}
    used: set[int] = set()
    for fld, col in column_map.items():
        idx = exact.get(col)
        if idx is None:
            idx = by_key.get(_header_key(col))
        if idx is None:
            raise SyncInputError(
                path,
                1,
                f"--column-map {fld}={col!r}: no such column; the header has: "
                + ", ".join(repr(h) for h in header),
            )
        out[fld] = [idx]
        used.add(idx)
    for fld, aliases in HEADER_ALIASES.items():
        if fld in out:
            continue
        found = [by_key[a] for a in aliases if a in by_key and by_key[a] not in used]
        found = list(dict.fromkeys(found))
        if not found:
            continue
        out[fld] = found if fld == "website" else found[:1]
        used.update(out[fld])
    return out


class _HashingLines:
    """A file's bytes → decoded text lines for `csv`, hashing the bytes as read.

    Reads blocks of whole lines (cut after the last ``\n``: UTF-8 never has that byte
    inside a character), so hashing, decoding and line splitting run in C per block, not
    per line; only a decoding error costs a count of the newlines before it.
    """

    BLOCK: Final = 1 << 20

    def __init__(self, raw: io.BufferedReader, path: Path) -> None:
        self._raw = raw
        self._path = path
        self.sha = hashlib.sha256()

    def __iter__(self) -> Iterator[str]:
        # the lines of each block, chained in C (a generator per line cost ~0.2 us a line)
        return itertools.chain.from_iterable(self._blocks())

    def _blocks(self) -> Iterator[io.StringIO]:
        update = self.sha.update
        physical = 0  # lines before the current block
        carry = b""
        first = True
        while True:
            data = self._raw.read(self.BLOCK)
            update(data)
            if first:
                first = False
                if data.startswith((b"\xff\xfe", b"\xfe\xff")):
                    raise SyncInputError(
                        self._path, 1, "the file is UTF-16; export or save it as 'CSV UTF-8'"
                    )
                if data.startswith(b"\xef\xbb\xbf"):
                    data = data[3:]
            if data:
                cut = data.rfind(b"\n") + 1
                if cut == 0:
                    carry += data
                    continue
                block, carry = carry + data[:cut], data[cut:]
            else:
                block, carry = carry, b""
                if not block:
                    return
            try:
                text = block.decode("utf-8")
            except UnicodeDecodeError as exc:
                line = physical + block.count(b"\n", 0, exc.start) + 1
                start = block.rfind(b"\n", 0, exc.start) + 1
                raise SyncInputError(
                    self._path,
                    line,
                    f"not UTF-8 (byte 0x{block[exc.start]:02x} at column "
                    f"{exc.start - start + 1}); export or save the file as 'CSV UTF-8'",
                ) from None
            physical += block.count(b"\n")
            # newline="": line ends are kept as they are, for csv to handle (RFC 4180)
            yield io.StringIO(text, newline="")
            if not data:
                return


_READ_BATCH: Final = 5_000
_PARALLEL_READ_BYTES: Final = 8 * 1024 * 1024
_PARALLEL_MIN_CPUS: Final = 4
_PARALLEL_BUILD_RECORDS: Final = 50_000
_by_line: Final = attrgetter("line")


def _domains_of_cells(_state: None, cells: list[str]) -> list[normalize.Normalized]:
    """Per row of a one-website-column file: its (domain, reason)."""
    return normalize.domains_with_reason(cells)


def _domains_of_rows(
    _state: None, rows: list[tuple[str, ...]]
) -> list[tuple[str | None, str | None]]:
    """Per row: the first website cell that yields a domain, else the telling reason."""
    domain_with_reason = normalize._domain_uncached
    out: list[tuple[str | None, str | None]] = []
    for cells in rows:
        dom: str | None = None
        reason: str | None = None
        for cell in cells:
            norm = domain_with_reason(cell)
            if norm.value is not None:
                dom = norm.value
                break
            if reason is None or (reason == "empty" and norm.reason != "empty"):
                reason = norm.reason
        out.append((dom, reason))
    return out


def _sniff_delimiter(first_line: str) -> str:
    counts = {d: first_line.count(d) for d in (",", ";", "\t")}
    best = max(counts, key=lambda d: counts[d])
    return best if counts[best] else ","


class _SharedCells(dict[str, str]):
    """Raw cell → its kept value (trimmed, cut), one string object per distinct value.

    Equal values of low-cardinality columns (stage, country, owner...) then cost a
    pointer per row, not a string, and a repeated cell costs one C-level lookup. A column
    of unique values stops being remembered after `LIMIT` distinct cells.
    """

    __slots__ = ()
    LIMIT: Final = 100_000

    def __missing__(self, raw: str) -> str:
        value = raw.strip()[:MAX_FIELD_CHARS]
        if len(self) < self.LIMIT:
            value = self[raw] = self.get(value, value)
        return value


_new_tuple: Final = tuple.__new__  # a NamedTuple without its Python-level __new__


def read_accounts(
    path: str | os.PathLike[str],
    *,
    column_map: Mapping[str, str] | None = None,
    population: str | None = None,
    population_column: str | None = None,
    population_map: Mapping[str, str] | None = None,
    keep_skipped_rows: bool = False,
    progress: Callable[[ProgressEvent], None] | None = None,
    jobs: int | None = None,
) -> ReadResult:
    """Read a CRM export into normalized accounts per population (no network).

    Give either `population` (the whole file is one population) or `population_column`
    with `population_map` (cell value → population slug, compared case-insensitively;
    rows with other values are skipped as `unmapped-population`).

    Raises :class:`SyncInputError` (``path:line: ...``) for undecodable bytes, a row
    with the wrong number of cells, a missing website column, and the like.

    `jobs` is how many processes normalize websites (None: every usable CPU for files
    of 8 MB and more on machines with 4 or more, else 1); the result does not depend on it.
    """
    p = Path(path)
    if (population is None) == (population_column is None):
        raise SyncError("give exactly one of: a population, or a population column with a map")
    if population is not None:
        _check_slug(population, "population")
    pop_map: dict[str, str] = {}
    if population_column is not None:
        if not population_map:
            raise SyncError("--population-column needs --map 'Value=population,...'")
        for value, slug in population_map.items():
            _check_slug(slug, f"--map {value}=")
            pop_map[value.strip().casefold()] = slug
    cmap = dict(column_map or {})
    try:
        raw = p.open("rb")
    except OSError as exc:
        raise SyncInputError(p, None, exc.strerror or str(exc)) from None
    with raw:
        lines = _HashingLines(raw, p)
        it = iter(lines)
        try:
            first = next(it)
        except StopIteration:
            raise SyncInputError(p, 1, "the file is empty (expected a header row)") from None

        reader = csv.reader(
            itertools.chain((first,), it), delimiter=_sniff_delimiter(first), strict=True
        )
        try:
            header = next(reader)
        except csv.Error as exc:
            raise SyncInputError(p, 1, f"bad header row: {exc}") from None
        header = [h.strip() for h in header]
        if not any(header):
            raise SyncInputError(p, 1, "the first row is empty (expected a header row)")
        cols = _detect_columns(header, cmap, p)
        if "website" not in cols:
            raise SyncInputError(
                p,
                1,
                "no website column found (looked for Website, Website URL, Company Domain "
                'Name, Domain, URL); name it with --column-map website="<column>". '
                "The header has: " + ", ".join(repr(h) for h in header),
            )
        pop_idx: int | None = None
        if population_column is not None:
            pop_idx = _column_index(header, population_column)
            if pop_idx is None:
                raise SyncInputError(
                    p,
                    1,
                    f"--population-column {population_column!r}: no such column; the "
                    "header has: " + ", ".join(repr(h) for h in header),
                )
        web_idx = cols["website"]
        id_idx = cols["id"][0] if "id" in cols else None
        name_idx = cols["name"][0] if "name" in cols else None
        # the raw website is not kept: `domain` is what partners can use, and a million
        # URLs would be the largest thing in memory
        field_names = tuple(f for f in CANONICAL_FIELDS[3:] if f in cols)
        value_idx = [cols[f][0] for f in field_names]
        kept_value = _SharedCells().__getitem__
        n_values = len(value_idx)
        values_of = operator.itemgetter(*value_idx) if n_values > 1 else None
        width = len(header)
        accounts: dict[str, list[Account]] = {}
        if population is not None:
            accounts[population] = []
        # per population: (domains seen, ids seen, its accounts), made on first sight
        per_pop: dict[str, tuple[set[str], set[str], list[Account]]] = {}
        skipped: list[Skipped] = []
        rows = 0
        # Rows are parsed and checked here, in file order; their website cells are
        # normalized in batches, on forked workers for large files (`jobs`), while the
        # next batch is parsed; the results are then applied in file order again.
        batches: deque[list[tuple[int, list[str], str]]] = deque()

        # one website column (the usual case): cells go as plain strings, normalized by a
        # C-level map; several: a tuple per row, the first cell with a domain wins
        single = web_idx[0] if len(web_idx) == 1 else None

        def parsed() -> Iterator[list[Any]]:
            nonlocal rows
            batch: list[tuple[int, list[str], str]] = []
            cells: list[Any] = []
            prev_line = reader.line_num
            try:
                for row in reader:
                    line = prev_line + 1
                    prev_line = reader.line_num
                    if not row or (len(row) == 1 and not row[0].strip()):
                        continue  # blank line
                    if len(row) != width:
                        raise SyncInputError(
                            p,
                            line,
                            f"expected {width} cells as in the header, found {len(row)}"
                            " (a stray delimiter or an unclosed quote?)",
                        )
                    rows += 1
                    if rows % 10_000 == 0 and progress is not None:
                        progress(ProgressEvent("read", rows))
                    if pop_idx is not None:
                        cell = row[pop_idx].strip()
                        pop = pop_map.get(cell.casefold())
                        if pop is None:
                            keep = tuple(row) if keep_skipped_rows else None
                            skipped.append(Skipped(line, "unmapped-population", None, cell, keep))
                            continue
                    else:
                        assert population is not None
                        pop = population
                    batch.append((line, row, pop))
                    cells.append(
                        row[single] if single is not None else tuple([row[i] for i in web_idx])
                    )
                    if len(batch) >= _READ_BATCH:
                        batches.append(batch)
                        yield cells
                        batch, cells = [], []
            except csv.Error as exc:
                raise SyncInputError(p, reader.line_num, f"malformed CSV: {exc}") from None
            if batch:
                batches.append(batch)
                yield cells

        if jobs is None:
            # The parent parses and dedupes (over half the work) while workers normalize:
            # on 2 CPUs that measured slower than one process, so only from 4 on.
            cpus = _parallel.available_cpus()
            big = p.stat().st_size >= _PARALLEL_READ_BYTES
            jobs = cpus if big and cpus >= _PARALLEL_MIN_CPUS else 1
        of_rows: Callable[[None, list[Any]], Sequence[tuple[str | None, str | None]]] = (
            _domains_of_cells if single is not None else _domains_of_rows
        )
        with _parallel.gc_paused(), _parallel.Workers(of_rows, None, jobs) as workers:
            for domains in workers.map(parsed()):
                for (line, row, pop), (dom, reason) in zip(batches.popleft(), domains, strict=True):
                    if dom is None:
                        keep = tuple(row) if keep_skipped_rows else None
                        r = "no-website" if reason in (None, "empty") else reason
                        skipped.append(Skipped(line, r, pop, "", keep))
                        continue
                    local_id = row[id_idx].strip()[:MAX_FIELD_CHARS] if id_idx is not None else ""
                    if not local_id:
                        local_id = dom
                    seen = per_pop.get(pop)
                    if seen is None:
                        seen = per_pop[pop] = (set(), set(), accounts.setdefault(pop, []))
                    doms, ids, out = seen
                    if dom in doms:
                        keep = tuple(row) if keep_skipped_rows else None
                        skipped.append(Skipped(line, "duplicate", pop, "", keep))
                        continue
                    if local_id in ids:
                        keep = tuple(row) if keep_skipped_rows else None
                        skipped.append(Skipped(line, "duplicate-id", pop, "", keep))
                        continue
                    doms.add(dom)
                    ids.add(local_id)
                    if values_of is not None:
                        values = tuple(map(kept_value, values_of(row)))
                    else:
                        values = (kept_value(row[value_idx[0]]),) if n_values else ()
                    nm = row[name_idx].strip()[:MAX_FIELD_CHARS] if name_idx is not None else ""
                    out.append(_new_tuple(Account, (line, local_id, nm, dom, values)))
        # unmapped-population rows were recorded while parsing, ahead of their batch
        skipped.sort(key=_by_line)
        # finish hashing any bytes after a trailing blank line the reader did not ask for
        for _ in it:
            pass
    if progress is not None:
        progress(ProgressEvent("read", rows, rows))
    return ReadResult(
        path=p,
        header=header,
        columns={f: [header[i] for i in idx] for f, idx in cols.items()},
        field_names=field_names,
        accounts=accounts,
        skipped=skipped,
        rows_read=rows,
        input_sha256=lines.sha.hexdigest(),
        options={
            "column_map": dict(sorted(cmap.items())),
            "population": population,
            "population_column": population_column,
            "population_map": dict(sorted(pop_map.items())),
        },
    )


def _column_index(header: list[str], name: str) -> int | None:
    if name in header:
        return header.index(name)
    key = _header_key(name)
    for i, h in enumerate(header):
        if _header_key(h) == key:
            return i
    return None


_SLUG = re.compile(r"^[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?$")


def _check_slug(slug: str, what: str) -> None:
    if not _SLUG.fullmatch(slug):
        raise SyncError(
            f"{what} {slug!r} is not a population slug (lowercase letters, digits, '-')"
        )


# --------------------------------------------------------------------------- building


@dataclass(frozen=True, slots=True)
class Chunk:
    """One chunk body (NDJSON or binary), ready to PUT as chunk `n`."""

    n: int
    body: bytes
    records: int
    sha256: bytes  # raw 32-byte digest of `body`
    content_type: str = protocol.NDJSON


def upload_digest(chunk_digests: Iterable[bytes]) -> str:
    """Manifest digest: SHA-256 over the raw SHA-256 digests of the chunks, in order."""
    h = hashlib.sha256()
    for d in chunk_digests:
        if len(d) != 32:
            raise ValueError("chunk digests are raw 32-byte SHA-256 values")
        h.update(d)
    return h.hexdigest()


_b64: Final = protocol.b64url


_U16: Final = struct.Struct(">H").pack
_U32: Final = struct.Struct(">I").pack
_NO_PARTNER: Final = b"\x00\x00\x00\x00"
# A record's head when its only token is the domain's (docs/protocol.md §8.3): the ref's
# u16 length and its 32 ASCII hex digits (crypto.RefMaker.refs_ascii), the token count
# (1), the kind code (0, domain) and the token, the self-sealed payload's u32 length.
_REF_CHARS: Final = protocol.SDK_REF_CHARS
_DOMAIN_HEAD: Final = struct.Struct(f">H{_REF_CHARS}sBB{protocol.TOKEN_BYTES}sI").pack


def binary_chunk_body(records: Sequence[bytes]) -> bytes:
    """A binary chunk (docs/protocol.md §8.3): magic, record count, the encoded records."""
    return protocol.BINARY_CHUNK_MAGIC + _U32(len(records)) + b"".join(records)


def binary_chunk_records(body: bytes) -> int:
    """The record count a binary chunk's header announces."""
    if body[:4] != protocol.BINARY_CHUNK_MAGIC or len(body) < 8:
        raise ValueError("not a binary chunk")
    return int.from_bytes(body[4:8], "big")


def encode_binary_record(
    ref: str, tokens: Sequence[tuple[str, bytes]], self_sealed: bytes, partner: bytes | None
) -> bytes:
    """One record of a binary chunk: ref, tokens, self-sealed and partner-sealed bytes."""
    rb = ref.encode("utf-8")
    codes = protocol.BINARY_KIND_CODES
    return b"".join(
        [
            _U16(len(rb)),
            rb,
            bytes([len(tokens)]),
            *(bytes([codes[k]]) + v for k, v in tokens),
            _U32(len(self_sealed)),
            self_sealed,
            _NO_PARTNER if partner is None else _U32(len(partner)) + partner,
        ]
    )


def build_upload(
    read: ReadResult,
    population: str,
    *,
    keys: crypto.PartnershipKeys,
    self_key: bytes,
    sealed_fields: Sequence[str],
    token_kinds: Sequence[str] = ("domain",),
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    max_chunk_bytes: int = MAX_CHUNK_BYTES,
    chunk_format: ChunkFormat = "ndjson",
    jobs: int | None = None,
) -> Iterator[Chunk]:
    """Chunks of one population's records for one partnership (docs/protocol.md §8).

    NDJSON (§8.2): a record's line is
    ``{"ref":…,"tokens":[{"kind":…,"value":…}],"self":…,"partner":…}`` with base64url
    (no padding) bytes; `partner` is null when `sealed_fields` is empty. Binary (§8.3):
    the same values as raw, length-prefixed bytes. Chunks close at `chunk_size` records
    or `max_chunk_bytes` bytes. `jobs` processes encode and seal (None: every usable CPU
    from 50,000 records on machines with 4 or more, else 1); the records do not depend on
    it.
    """
    if chunk_size < 1:
        raise ValueError("chunk_size must be at least 1")
    if chunk_format not in ("ndjson", "binary"):
        raise ValueError(f"unknown chunk format {chunk_format!r}")
    binary = chunk_format == "binary"
    kinds = list(dict.fromkeys(token_kinds))
    if "domain" not in kinds or not set(kinds) <= set(crypto.TOKEN_KINDS):
        raise ValueError(f"token kinds must include 'domain' and be among {crypto.TOKEN_KINDS}")
    available = read.available_fields()
    extra = [f for f in sealed_fields if f not in available]
    if extra:
        raise ValueError(f"cannot seal field(s) the file does not have: {', '.join(extra)}")
    pid = keys.partnership_id
    accounts = read.accounts.get(population, [])
    refs = crypto.RefMaker(self_key, pid)
    dom_tok = keys.tokenizer("domain")
    name_tok = keys.tokenizer("name") if "name" in kinds else None
    self_sealer = crypto.Sealer(self_key)
    partner_sealer = keys.sealer() if sealed_fields else None
    partner_fields = crypto.FlatFields(sealed_fields) if sealed_fields else None
    self_fields = crypto.FlatFields(["domain", "id", "name", "population"])
    # AAD = label || partnership id || ref: the constant part once
    s_prefix, p_prefix = crypto.self_aad(pid, ""), crypto.partner_aad(pid, "")
    add = operator.add
    all_names = read.name_keys(population) if name_tok is not None else []
    # Records go out in the order of their domain tokens (docs/protocol.md §8.2): the
    # escrow's token index then takes each chunk's inserts in one narrow key range instead
    # of all over the upload's part of it (PostgreSQL: 1M tokens COPYed in 1.8 s instead
    # of 4.0 s). The order is a function of the token set the escrow holds anyway, and it
    # no longer shows the order of the CRM export.
    all_dtoks = dom_tok.tokens([a.domain for a in accounts])
    if len(accounts) > 1:
        # Big-endian ints of equal-length tokens sort as the bytes do, and compare faster;
        # itemgetter reorders in C (together 1M records: 1.9 -> 1.4 s).
        ints = list(map(int.from_bytes, all_dtoks))
        pick = operator.itemgetter(*sorted(range(len(accounts)), key=ints.__getitem__))
        accounts, all_dtoks = list(pick(accounts)), list(pick(all_dtoks))
        if all_names:
            all_names = list(pick(all_names))

    def lines(batch: Sequence[Account], start: int) -> list[bytes]:
        # Column by column, so that the per-record steps are C-level `map`s: a record
        # costs its HMACs and AES-GCM seals plus little interpreter work.
        n = len(batch)
        if not n:
            return []
        _lines, ids, names, doms, vals = zip(*batch, strict=True)
        columns: dict[str, Sequence[str]] = {"domain": doms, "id": ids, "name": names}
        if read.field_names:
            columns.update(zip(read.field_names, zip(*vals, strict=True), strict=True))
        rbs = refs.refs_ascii(ids)  # ASCII hex refs, as bytes
        dtoks = all_dtoks[start : start + n]
        ntoks: list[bytes | None] = []
        if name_tok is not None:
            nkeys = all_names[start : start + n]
            toks = iter(name_tok.tokens([k for k in nkeys if k]))
            ntoks = [next(toks) if k else None for k in nkeys]
        # `name` and the optional columns are null when empty, as in a record's dict
        selfs = self_sealer.seal_columns(
            list(map(add, repeat(s_prefix, n), rbs)),
            self_fields.encode_columns(
                {"domain": doms, "id": ids, "name": names, "population": repeat(population, n)},
                nullable=("name",),
            ),
        )
        partners: Sequence[bytes | None]
        if partner_sealer is not None and partner_fields is not None:
            partners = partner_sealer.seal_columns(
                list(map(add, repeat(p_prefix, n), rbs)),
                partner_fields.encode_columns(
                    {f: columns[f] for f in partner_fields.names},
                    nullable=[f for f in partner_fields.names if f not in ("domain", "id")],
                ),
            )
        else:
            partners = [None] * n
        if binary:
            # ref (u16 length, always 32) | tokens | u32 + self | u32 + partner (or 0)
            if partner_sealer is not None:
                p_len: Iterable[bytes] = map(_U32, map(len, partners))  # type: ignore[arg-type]
                p_body: Iterable[bytes] = partners  # type: ignore[assignment]  # all sealed
            else:
                p_len, p_body = repeat(_NO_PARTNER, n), repeat(b"", n)
            if name_tok is None:
                # ref, its one token and the self-sealed length in one pack (as the escrow
                # reads them in one unpack): 0.45 -> 0.36 µs per record
                heads = map(
                    _DOMAIN_HEAD,
                    repeat(_REF_CHARS),
                    rbs,
                    repeat(1),
                    repeat(0),
                    dtoks,
                    map(len, selfs),
                )
                return list(map(b"".join, zip(heads, selfs, p_len, p_body, strict=True)))
            toks_part = [
                b"\x01\x00" + d if t is None else b"\x02\x00" + d + b"\x01" + t
                for d, t in zip(dtoks, ntoks, strict=True)
            ]
            return list(
                map(
                    b"".join,
                    zip(
                        map(_U16, map(len, rbs)),
                        rbs,
                        toks_part,
                        map(_U32, map(len, selfs)),
                        selfs,
                        p_len,
                        p_body,
                        strict=True,
                    ),
                )
            )
        out: list[bytes] = []
        for i, rb in enumerate(rbs):
            ref = rb.decode("ascii")
            sb, pb = selfs[i], partners[i]
            tokens = '{"kind":"domain","value":"' + _b64(dtoks[i]) + '"}'
            if ntoks and ntoks[i] is not None:
                tokens += ',{"kind":"name","value":"' + _b64(ntoks[i] or b"") + '"}'
            partner = "null" if pb is None else '"' + _b64(pb) + '"'
            out.append(
                f'{{"ref":"{ref}","tokens":[{tokens}],"self":"{_b64(sb)}","partner":{partner}}}\n'.encode(
                    "ascii"
                )
            )
        return out

    def work(_state: None, span: tuple[int, int]) -> list[bytes]:
        with _parallel.gc_paused():
            return lines(accounts[span[0] : span[1]], span[0])

    if jobs is None:
        # Forked sealers cost CPU of their own (8.7 CPU-s instead of 5.5 for 865k records):
        # on 2 CPUs they saved 1 s of an idle machine's wall clock and cost 2.5-3 s when the
        # CPUs were shared (BENCHMARKS.md, "session 5"), so only from 4 CPUs on, as reading.
        cpus = _parallel.available_cpus()
        big = len(accounts) >= _PARALLEL_BUILD_RECORDS
        jobs = cpus if big and cpus >= _PARALLEL_MIN_CPUS else 1
    # Forked workers inherit the keys and accounts; only spans go out and encoded records
    # come back. Nonces come from os.urandom, so forked children never repeat one.
    batch_size = min(chunk_size, 2_000 if jobs <= 1 else 5_000)
    spans = ((i, i + batch_size) for i in range(0, len(accounts), batch_size))
    ctype = protocol.BINARY_CHUNK if binary else protocol.NDJSON
    join = binary_chunk_body if binary else b"".join
    n = 0
    buf: list[bytes] = []
    size = 8 if binary else 0  # the binary header
    empty = size
    with _parallel.Workers(work, None, jobs) as workers:
        for out in workers.map(spans):
            if len(buf) + len(out) <= chunk_size:
                out_size = sum(map(len, out))
                if size + out_size <= max_chunk_bytes:  # all of it fits: no check per record
                    buf.extend(out)
                    size += out_size
                    continue
            for line in out:
                if buf and (len(buf) >= chunk_size or size + len(line) > max_chunk_bytes):
                    body = join(buf)
                    yield Chunk(n, body, len(buf), hashlib.sha256(body).digest(), ctype)
                    n += 1
                    buf, size = [], empty
                buf.append(line)
                size += len(line)
    if buf:
        body = join(buf)
        yield Chunk(n, body, len(buf), hashlib.sha256(body).digest(), ctype)


# --------------------------------------------------------------------------- escrow side


@dataclass(frozen=True, slots=True)
class ProgressEvent:
    """`stage` is read (rows), build (records), send (chunks) or commit."""

    stage: Literal["read", "build", "send", "commit"]
    done: int
    total: int | None = None
    partner: str | None = None
    population: str | None = None


@dataclass
class UploadResult:
    partner: str
    partnership_id: str
    population: str
    records: int
    chunks: int
    token_kinds: list[str]
    sealed_fields: list[str]
    status: str  # committed, dry-run, unchanged
    upload_id: str | None = None
    resumed: bool = False
    bytes: int = 0


@dataclass
class SyncReport:
    path: str
    rows_read: int
    populations: dict[str, int]
    skipped: dict[str, int]
    uploads: list[UploadResult] = field(default_factory=list)
    created_populations: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    dry_run: bool = False

    def as_dict(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "dry_run": self.dry_run,
            "rows_read": self.rows_read,
            "populations": dict(self.populations),
            "skipped": dict(sorted(self.skipped.items())),
            "uploads": [vars(u).copy() for u in self.uploads],
            "created_populations": list(self.created_populations),
            "warnings": list(self.warnings),
            "notes": list(self.notes),
        }


def guess_population_kind(slug: str) -> protocol.PopulationKind:
    """A population kind from its name: customers, opportunities, prospects, partners."""
    s = slug.lower()
    K = protocol.PopulationKind
    for words, kind in (
        (("customer", "client", "account"), K.customers),
        (("opportunit", "pipeline", "deal", "opp"), K.opportunities),
        (("prospect", "lead", "target"), K.prospects),
        (("partner", "reseller"), K.partners),
    ):
        if any(w in s for w in words):
            return kind
    return K.other


def default_state_dir(key_file: str | os.PathLike[str] | None = None) -> Path:
    """``<key file stem>.uploads/`` beside the key file: where staged uploads wait to be
    resumed. Named after the key file so that two companies' key files in one directory
    (two partners of one partnership) never share upload state."""
    from blindmap import keyfile

    base = Path(key_file).expanduser() if key_file else keyfile.default_key_path()
    return base.with_name(base.stem + ".uploads")


def _private_dir(path: Path) -> None:
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    if os.name == "posix":
        os.chmod(path, 0o700)


def _write_private(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.replace(tmp, path)


class _Staging:
    """A staged upload's chunk files and state, in one private directory."""

    def __init__(
        self,
        root: Path,
        partnership_id: uuid.UUID,
        population: str,
        chunk_format: ChunkFormat = DEFAULT_CHUNK_FORMAT,
    ) -> None:
        self.dir = root / f"{partnership_id}-{population}"
        self.state_path = self.dir / "state.json"
        self.suffix = ".bin" if chunk_format == "binary" else ".ndjson"

    def chunk_path(self, n: int) -> Path:
        return self.dir / f"chunk-{n:06d}{self.suffix}"

    def load(self) -> dict[str, Any] | None:
        try:
            data = json.loads(self.state_path.read_text("utf-8"))
        except (OSError, ValueError):
            return None
        if not isinstance(data, dict) or data.get("version") != _STATE_VERSION:
            return None
        return data

    def save(self, state: dict[str, Any]) -> None:
        _private_dir(self.dir)
        _write_private(self.state_path, json.dumps(state, indent=1, sort_keys=True).encode())

    def intact(self, state: dict[str, Any]) -> bool:
        """Every chunk file is there with the SHA-256 the state recorded, except for the
        chunks the escrow had acknowledged when the build ended (`landed`: no file)."""
        sums = state.get("chunk_sha256")
        landed = state.get("landed")
        if (
            not isinstance(sums, list)
            or len(sums) != state.get("chunk_count")
            or not isinstance(landed, list)
        ):
            return False
        landed = set(landed)
        for n, want in enumerate(sums):
            if n in landed:
                continue
            try:
                got = hashlib.sha256(self.chunk_path(n).read_bytes()).hexdigest()
            except OSError:
                return False
            if got != want:
                return False
        return True

    def clear(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)


def _fingerprint(parts: Mapping[str, Any]) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()


def _load_policy(client: Client, pid: uuid.UUID) -> Policy:
    from blindmap.policy import STRICTEST_TEMPLATE, Policy, load_template

    try:
        return Policy.model_validate(client.get_policy(pid).document)
    except NotFoundError:
        return load_template(STRICTEST_TEMPLATE)


def _partner_matches_names(client: Client, pid: uuid.UUID) -> bool:
    try:
        return "name" in client.get_partner_policy(pid).match_on
    except NotFoundError:
        return False


def _select_partnerships(
    client: Client, partners: Sequence[str] | None
) -> list[protocol.Partnership]:
    active = client.list_partnerships(status=protocol.PartnershipStatus.active)
    if partners is None:
        if not active:
            raise SyncError("no active partnership to sync with (see `blindmap partners list`)")
        return active
    out: list[protocol.Partnership] = []
    for want in partners:
        hit = [p for p in active if p.partner.slug == want or str(p.id) == want]
        if not hit:
            raise UnknownPartnerError(
                f"no active partnership with {want!r} (see `blindmap partners list`)"
            )
        if hit[0] not in out:
            out.append(hit[0])
    return out


def sync(
    client: Client,
    path: str | os.PathLike[str],
    *,
    private_key: X25519PrivateKey,
    partners: Sequence[str] | None = None,
    population: str | None = None,
    population_column: str | None = None,
    population_map: Mapping[str, str] | None = None,
    column_map: Mapping[str, str] | None = None,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    chunk_format: ChunkFormat = DEFAULT_CHUNK_FORMAT,
    dry_run: bool = False,
    confirm_shrink: bool = False,
    key_file: str | os.PathLike[str] | None = None,
    state_dir: str | os.PathLike[str] | None = None,
    read: ReadResult | None = None,
    progress: Callable[[ProgressEvent], None] | None = None,
    jobs: int | None = None,
    send_ahead: int = DEFAULT_SEND_AHEAD,
) -> SyncReport:
    """Read `path` and replace my lists in each selected active partnership.

    `partners` are partner slugs or partnership ids (None: every active partnership).
    Pass `read` to reuse a :func:`read_accounts` result (the CLI does, to write skipped
    rows). With `dry_run` nothing is created or sent: the report says what would be.
    `chunk_format` is "binary" (default, docs/protocol.md §8.3) or "ndjson" (§8.2).
    `jobs` is how many processes normalize and seal (None: all usable CPUs for large
    inputs on machines with 4 or more, else 1); `send_ahead` how many chunks are in
    flight to the escrow at once.
    """
    if read is None:
        read = read_accounts(
            path,
            column_map=column_map,
            population=population,
            population_column=population_column,
            population_map=population_map,
            progress=progress,
            jobs=jobs,
        )
    report = SyncReport(
        path=str(path),
        rows_read=read.rows_read,
        populations={pop: len(accts) for pop, accts in read.accounts.items()},
        skipped=dict(read.skipped_counts),
        dry_run=dry_run,
    )
    selected = _select_partnerships(client, partners)
    my_public = crypto.public_key_bytes(private_key)
    self_key = crypto.self_key(private_key)

    existing = {p.slug for p in client.list_populations()}
    for pop in read.accounts:
        if pop not in existing:
            kind = guess_population_kind(pop)
            if not dry_run:
                try:
                    client.create_population(pop, kind=kind)
                except PermissionDeniedError:
                    raise SyncError(
                        f"population {pop!r} does not exist and this API key may not create "
                        f"it: an admin can, with `blindmap populations create {pop} --kind "
                        f"{kind.value}`"
                    ) from None
            report.created_populations.append(pop)
            report.notes.append(
                f"population {pop!r} did not exist: "
                + ("would create" if dry_run else "created")
                + f" it with kind {kind.value!r}"
            )

    root = Path(state_dir) if state_dir else default_state_dir(key_file)
    from blindmap import _trust

    for p in selected:
        slug = p.partner.slug
        if p.partner.public_key is None:
            report.warnings.append(f"{slug} has not registered a public key yet: skipped")
            continue
        if p.me.public_key is None or crypto.decode_public_key(p.me.public_key) != my_public:
            raise SyncError(
                "your key file differs from the key the escrow holds for you: tokens would "
                "not match your partners'. Run `blindmap key register` (or use the right "
                "--key-file)"
            )
        partner_public = crypto.decode_public_key(p.partner.public_key)
        trust = _trust.status(str(p.id), p.partner.public_key, Path(key_file) if key_file else None)
        if trust == "changed":
            raise SyncError(
                f"{slug}'s public key changed since you verified the safety code: compare the "
                f"new code (`blindmap partners show {slug}`) before syncing"
            )
        keys = crypto.PartnershipKeys.derive(private_key, partner_public, p.id)
        policy = _load_policy(client, p.id)
        names = "name" in policy.match_on and _partner_matches_names(client, p.id)
        token_kinds = ["domain", "name"] if names and "name" in read.columns else ["domain"]
        epochs = protocol.KeyEpochs(mine=p.me.key_epoch, partner=p.partner.key_epoch)
        for pop in read.accounts:
            allowed = policy.fields_for(pop)
            available = read.available_fields()
            sealed = [f for f in allowed if f in available]
            missing = [f for f in allowed if f not in available]
            if missing:
                report.warnings.append(
                    f"{slug}/{pop}: your policy shares {', '.join(missing)} but the file has "
                    "no such column: not sent"
                )
            result = _sync_one(
                client,
                read,
                pop,
                partner=slug,
                keys=keys,
                self_key=self_key,
                sealed=sealed,
                token_kinds=token_kinds,
                epochs=epochs,
                chunk_size=chunk_size,
                chunk_format=chunk_format,
                confirm_shrink=confirm_shrink,
                dry_run=dry_run,
                staging=_Staging(root, p.id, pop, chunk_format),
                progress=progress,
                jobs=jobs,
                send_ahead=send_ahead,
            )
            report.uploads.append(result)
    return report


def _sync_one(
    client: Client,
    read: ReadResult,
    pop: str,
    *,
    partner: str,
    keys: crypto.PartnershipKeys,
    self_key: bytes,
    sealed: list[str],
    token_kinds: list[str],
    epochs: protocol.KeyEpochs,
    chunk_size: int,
    chunk_format: ChunkFormat,
    confirm_shrink: bool,
    dry_run: bool,
    staging: _Staging,
    progress: Callable[[ProgressEvent], None] | None,
    jobs: int | None,
    send_ahead: int,
) -> UploadResult:
    pid = keys.partnership_id
    total = len(read.accounts.get(pop, []))

    def emit(stage: Literal["build", "send", "commit"], done: int, of: int | None) -> None:
        if progress is not None:
            progress(ProgressEvent(stage, done, of, partner, pop))

    result = UploadResult(
        partner=partner,
        partnership_id=str(pid),
        population=pop,
        records=0,
        chunks=0,
        token_kinds=token_kinds,
        sealed_fields=sealed,
        status="dry-run" if dry_run else "committed",
    )

    def chunks() -> Iterator[Chunk]:
        done = 0
        for c in build_upload(
            read,
            pop,
            keys=keys,
            self_key=self_key,
            sealed_fields=sealed,
            token_kinds=token_kinds,
            chunk_size=chunk_size,
            chunk_format=chunk_format,
            jobs=jobs,
        ):
            done += c.records
            emit("build", done, total)
            yield c

    if dry_run:
        for c in chunks():
            result.records += c.records
            result.chunks += 1
            result.bytes += len(c.body)
        return result

    fingerprint = _fingerprint(
        {
            "input_sha256": read.input_sha256,
            "options": read.options,
            "population": pop,
            "sealed_fields": sealed,
            "token_kinds": token_kinds,
            "key_epochs": epochs.model_dump(),
            "keys": [keys.my_public.hex(), keys.partner_public.hex()],
            "normalizer": normalize.NORMALIZER_VERSION,
            "chunk_size": chunk_size,
            "chunk_format": chunk_format,
            "max_chunk_bytes": MAX_CHUNK_BYTES,
            "format": _STATE_VERSION,
        }
    )
    state = staging.load()
    reuse = state is not None and state.get("fingerprint") == fingerprint and staging.intact(state)
    if state is not None and not reuse:
        # a different input, or a build that stopped before its last chunk (the seals'
        # nonces make a rebuilt chunk differ from one the escrow may hold): start afresh
        _discard(client, staging, state.get("upload_id"))
        state = None
    # chunk_count and digest go with the commit (docs/protocol.md §8.1), so each chunk is
    # sent as soon as it is built, while the next ones are sealed
    manifest = protocol.UploadCreate(
        population=pop,
        normalizer_version=normalize.NORMALIZER_VERSION,
        token_kinds=[protocol.TokenKind(k) for k in token_kinds],
        sealed_fields=sealed,
        key_epochs=epochs,
        record_count=total,
        confirm_shrink=confirm_shrink,
    )
    result.records = total
    upload: protocol.Upload | None = None
    if state is not None:
        result.resumed = True
        if state.get("upload_id"):
            try:
                upload = client.get_upload(state["upload_id"])
            except NotFoundError:
                upload = None
            if upload is not None and upload.status is protocol.UploadStatus.committed:
                staging.clear()  # committed before the last run could clean up
                result.chunks = state["chunk_count"]
                result.upload_id = str(upload.id)
                return result
            if upload is not None and (
                upload.status is not protocol.UploadStatus.staged
                or state.get("manifest") != manifest.model_dump(mode="json")
            ):
                _abort_quietly(client, str(upload.id))
                upload = None
        held = set(upload.received_chunks) if upload is not None else set()
        if not set(state["landed"]) <= held:
            # chunks sent without a local copy are no longer on the escrow: start afresh
            _discard(client, staging, upload.id if upload is not None else None)
            state, upload = None, None
            result.resumed = False
    if state is None:
        staging.clear()
        _private_dir(staging.dir)
        state = _fresh_state(fingerprint, pid, pop, total)
    if upload is None:
        upload = client.create_upload(pid, manifest)
        state["upload_id"] = str(upload.id)
        state["manifest"] = manifest.model_dump(mode="json")
        staging.save(state)
    result.upload_id = str(upload.id)
    outbox = _Outbox(staging)
    building: Generator[int, None, None] | None = None
    if state["chunk_count"] is None:
        building = _build_staged(chunks(), outbox, state)
    received = set(upload.received_chunks)
    ctype = protocol.BINARY_CHUNK if chunk_format == "binary" else protocol.NDJSON
    for attempt in range(_TRANSIENT_ROUNDS):
        try:
            todo = (
                building
                if building is not None
                else [n for n in range(state["chunk_count"]) if n not in received]
            )
            for n, sent in _put_chunks(client, upload.id, outbox.body, todo, ctype, send_ahead):
                outbox.landed(n)
                received.add(n)
                result.bytes += sent
                emit("send", len(received), state["chunk_count"])
            building = None
            end = protocol.UploadCommit(chunk_count=state["chunk_count"], digest=state["digest"])
            emit("commit", 0, 1)
            try:
                committed = client.commit_upload(upload.id, end)
            except ValidationError:
                # The escrow refused what was sent (count, digest, a ref in two chunks):
                # resuming these bytes would fail the same way, so start afresh next time.
                _discard(client, staging, upload.id)
                raise
            break
        except (APIConnectionError, InternalServerError) as exc:
            # The SDK already retried this request. Build (and stage) the rest first if the
            # build was still going, then wait, ask the escrow what it holds and continue
            # the same upload with the same bytes.
            if building is not None:
                try:
                    outbox.persist()
                    for _ in building:
                        pass
                except BaseException:
                    _discard(client, staging, upload.id)
                    raise
                building = None
            if attempt == _TRANSIENT_ROUNDS - 1:
                raise SyncError(
                    f"{partner}/{pop}: the escrow kept failing ({exc}); the upload is staged "
                    "locally: run the same command again to resume it"
                ) from exc
            _sleep(min(30.0, 2.0 * 2**attempt))
            try:
                got = client.get_upload(upload.id)
            except (APIConnectionError, InternalServerError):
                continue
            if got.status is protocol.UploadStatus.committed:
                committed = got
                break
            received = set(got.received_chunks)
        except BaseException:
            if building is not None:
                # stopped mid-build (a refused chunk, a field that cannot be sealed, ^C):
                # what was staged cannot be resumed, so nothing is kept on either side
                building.close()
                _discard(client, staging, upload.id)
            raise
    result.chunks = state["chunk_count"]
    emit("commit", 1, 1)
    staging.clear()
    result.upload_id = str(committed.id)
    return result


def _fresh_state(fingerprint: str, pid: uuid.UUID, pop: str, records: int) -> dict[str, Any]:
    return {
        "version": _STATE_VERSION,
        "fingerprint": fingerprint,
        "partnership_id": str(pid),
        "population": pop,
        "record_count": records,
        "chunk_count": None,  # until the last chunk is built
        "chunk_sha256": [],
        "landed": [],  # acknowledged when the build ended: no file kept
        "digest": None,
        "upload_id": None,
        "manifest": None,
    }


class _Outbox:
    """Chunk bodies from their build to the escrow's receipt: in memory while the build
    streams (a 1M sync wrote and read back ≈ 200 MB of files per side, ≈ 0.3-1 CPU-s,
    for a copy that a stream cannot resume from anyway), in the staging directory once
    the build has ended or the escrow failed (:meth:`persist`), for a resume."""

    def __init__(self, staging: _Staging) -> None:
        self.staging = staging
        self.acked: set[int] = set()
        self._mem: dict[int, bytes] = {}
        self._spill = False

    def add(self, n: int, body: bytes) -> None:
        if self._spill:
            _write_private(self.staging.chunk_path(n), body)
        else:
            self._mem[n] = body

    def body(self, n: int) -> bytes:
        """The bytes of chunk n (called from the PUT threads)."""
        body = self._mem.get(n)
        return body if body is not None else self.staging.chunk_path(n).read_bytes()

    def landed(self, n: int) -> None:
        self.acked.add(n)
        self._mem.pop(n, None)

    def persist(self) -> None:
        """Write what is in memory to files; from now on every chunk goes to a file."""
        for n, body in list(self._mem.items()):
            _write_private(self.staging.chunk_path(n), body)
        self._spill = True
        self._mem.clear()


def _build_staged(
    chunks: Iterable[Chunk], outbox: _Outbox, state: dict[str, Any]
) -> Generator[int, None, None]:
    """Hand each chunk to the outbox as it is built and yield its number; after the last,
    the chunks not yet acknowledged go to files and the state gets the chunk count, the
    chunks' SHA-256, the ones acknowledged (no file) and the digest, and is saved (from
    then on a stopped upload can resume with the same bytes)."""
    sums: list[str] = []
    for c in chunks:
        if c.n != len(sums):
            raise AssertionError(f"chunk {c.n} built after {len(sums)} others")
        outbox.add(c.n, c.body)
        sums.append(c.sha256.hex())
        yield c.n
    outbox.persist()
    state["chunk_count"] = len(sums)
    state["chunk_sha256"] = sums
    state["landed"] = sorted(outbox.acked)
    state["digest"] = upload_digest(bytes.fromhex(x) for x in sums)
    outbox.staging.save(state)


def _put_chunks(
    client: Client,
    upload_id: uuid.UUID,
    body_of: Callable[[int], bytes],
    todo: Iterable[int],
    content_type: str,
    send_ahead: int,
) -> Iterator[tuple[int, int]]:
    """PUT the chunks `todo`, up to `send_ahead` at once; yields (n, bytes) as each lands.
    `todo` may be the build itself (:func:`_build_staged`): the next chunk is then built
    while the last ones are in flight.

    Chunks are independent on the escrow (any order, each idempotent), so a few in
    flight keep both the network and the server busy while one is being stored. The
    first failure stops sending and is raised once the requests in flight have ended.
    """

    def put(n: int) -> tuple[int, int]:
        body = body_of(n)
        client.put_chunk(upload_id, n, body, content_type=content_type)
        return n, len(body)

    if send_ahead <= 1:
        for n in todo:
            yield put(n)
        return
    with ThreadPoolExecutor(send_ahead, thread_name_prefix="blindmap-put") as pool:
        pending: deque[Future[tuple[int, int]]] = deque()
        it = iter(todo)
        try:
            for n in it:  # `todo` may build chunk n only now: with the others in flight
                while len(pending) >= send_ahead:
                    yield pending.popleft().result()
                pending.append(pool.submit(put, n))
            while pending:
                yield pending.popleft().result()
        finally:
            for f in pending:
                f.cancel()


def _discard(client: Client, staging: _Staging, upload_id: object) -> None:
    """Give up a staged upload on both sides: abort it on the escrow, remove its files."""
    _abort_quietly(client, upload_id)
    staging.clear()


def _abort_quietly(client: Client, upload_id: object) -> None:
    """Abort a staged upload we no longer want; never touch a committed one."""
    if not upload_id:
        return
    try:
        if client.get_upload(str(upload_id)).status is protocol.UploadStatus.staged:
            client.abort_upload(str(upload_id))
    except (NotFoundError, ConflictError):
        pass  # already gone, committed or aborted
