"""Parse, validate and store one NDJSON chunk of an upload.

Validation is strict and names the line and field: the escrow must never store
something that looks like plaintext where a token or ciphertext belongs. Storage uses
COPY on PostgreSQL and one executemany per table on SQLite, tokens sorted by key
(inserting in index order is several times faster than random order).
"""

from __future__ import annotations

import base64
import binascii
import json
import re
import uuid
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy.orm import Session

from blindmap.protocol import MAX_REF_CHARS, MAX_TOKENS_PER_RECORD, TOKEN_BYTES
from service import errors

KIND_CODES = {"domain": 0, "name": 1}
KIND_NAMES = {v: k for k, v in KIND_CODES.items()}
# A chunk may hold at most this many records; seq = n * CHUNK_SLOT + position keeps
# record keys unique and ordered without a round trip for ids.
CHUNK_SLOT = 1_000_000
_MIN_SEALED = 12 + 16  # nonce + GCM tag
_PLAINTEXT = re.compile(r"[@.]|\s")
_B64URL = re.compile(r"^[A-Za-z0-9_-]*$")
_RECORD_KEYS = frozenset({"ref", "tokens", "self", "partner"})


@dataclass
class ParsedChunk:
    record_rows: list[tuple[Any, ...]] = field(default_factory=list)
    token_rows: list[tuple[Any, ...]] = field(default_factory=list)
    refs: set[str] = field(default_factory=set)


def _bad(line: int, fld: str, message: str) -> errors.Unprocessable:
    return errors.Unprocessable(
        f"line {line}: {fld}: {message}",
        errors=[{"field": fld, "in": "body", "line": line, "message": message}],
    )


def _b64(value: Any, line: int, fld: str) -> bytes:
    if not isinstance(value, str):
        raise _bad(line, fld, "must be a base64url string")
    if not _B64URL.match(value):
        if _PLAINTEXT.search(value):
            raise _bad(
                line,
                fld,
                "looks like plaintext ('@', '.' or spaces): the escrow accepts only tokens and "
                "ciphertext computed on your machine (docs/protocol.md)",
            )
        raise _bad(line, fld, "is not base64url without padding")
    try:
        return base64.urlsafe_b64decode(value + "=" * (-len(value) % 4))
    except (binascii.Error, ValueError):
        raise _bad(line, fld, "is not valid base64url") from None


def parse_chunk(
    body: bytes,
    *,
    n: int,
    upload_num: int,
    partnership_id: uuid.UUID,
    token_kinds: list[str],
    sealed_fields: list[str],
    max_records: int,
    max_sealed_bytes: int,
) -> ParsedChunk:
    """Validate every line of an NDJSON chunk and build the rows to store."""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise errors.Unprocessable(f"chunk {n} is not UTF-8 (byte {exc.start})") from None
    lines = text.splitlines()
    if len(lines) > max_records:
        raise errors.PayloadTooLarge(
            f"chunk {n} holds {len(lines)} records; the limit is {max_records} per chunk",
            limit_records=max_records,
        )
    allowed_kinds = {KIND_CODES[k] for k in token_kinds}
    wants_partner = bool(sealed_fields)
    out = ParsedChunk()
    base = n * CHUNK_SLOT
    for i, raw in enumerate(lines):
        line = i + 1
        if not raw.strip():
            raise _bad(line, "record", "empty line")
        try:
            rec = json.loads(raw)
        except json.JSONDecodeError as exc:
            raise _bad(line, "record", f"invalid JSON ({exc.msg})") from None
        if not isinstance(rec, dict):
            raise _bad(line, "record", "must be a JSON object")
        unknown = set(rec) - _RECORD_KEYS
        if unknown:
            raise _bad(line, sorted(unknown)[0], "unknown field")
        ref = rec.get("ref")
        if not isinstance(ref, str) or not ref:
            raise _bad(line, "ref", "required, a non-empty string")
        if len(ref) > MAX_REF_CHARS:
            raise _bad(line, "ref", f"longer than {MAX_REF_CHARS} characters")
        if _PLAINTEXT.search(ref):
            raise _bad(
                line, "ref", "looks like plaintext ('@', '.' or spaces); use pseudonymous refs"
            )
        if ref in out.refs:
            raise _bad(line, "ref", f"'{ref}' appears twice in this chunk")
        out.refs.add(ref)
        toks = rec.get("tokens")
        if not isinstance(toks, list) or not toks:
            raise _bad(line, "tokens", "required, a non-empty list")
        if len(toks) > MAX_TOKENS_PER_RECORD:
            raise _bad(line, "tokens", f"more than {MAX_TOKENS_PER_RECORD} tokens per record")
        seq = base + i
        seen: set[tuple[int, bytes]] = set()
        for j, tok in enumerate(toks):
            where = f"tokens[{j}]"
            if not isinstance(tok, dict) or set(tok) != {"kind", "value"}:
                raise _bad(line, where, "must be an object with exactly 'kind' and 'value'")
            kind = KIND_CODES.get(tok["kind"]) if isinstance(tok["kind"], str) else None
            if kind is None or kind not in allowed_kinds:
                raise _bad(
                    line,
                    f"{where}.kind",
                    f"must be one of the manifest's token kinds {token_kinds}",
                )
            value = _b64(tok["value"], line, f"{where}.value")
            if len(value) != TOKEN_BYTES:
                raise _bad(
                    line, f"{where}.value", f"must be exactly {TOKEN_BYTES} bytes, got {len(value)}"
                )
            if (kind, value) not in seen:  # a repeated token adds nothing
                seen.add((kind, value))
                out.token_rows.append((upload_num, kind, value, seq, partnership_id))
        self_sealed = _b64(rec.get("self"), line, "self")
        partner_raw = rec.get("partner")
        partner_sealed = None
        if partner_raw is not None:
            if not wants_partner:
                raise _bad(line, "partner", "the manifest declares no sealed fields; send null")
            partner_sealed = _b64(partner_raw, line, "partner")
        elif wants_partner:
            raise _bad(line, "partner", "required: the manifest declares sealed fields")
        for fld, blob in (("self", self_sealed), ("partner", partner_sealed)):
            if blob is None:
                continue
            if len(blob) < _MIN_SEALED:
                raise _bad(line, fld, f"too short to be a sealed payload (< {_MIN_SEALED} bytes)")
            if len(blob) > max_sealed_bytes:
                raise _bad(line, fld, f"sealed payload over the limit of {max_sealed_bytes} bytes")
        out.record_rows.append((upload_num, seq, partnership_id, ref, self_sealed, partner_sealed))
    out.token_rows.sort(key=lambda r: (r[1], r[2], r[3]))
    return out


def store(session: Session, chunk: ParsedChunk) -> None:
    """Write a parsed chunk in the current transaction (COPY on PostgreSQL)."""
    conn = session.connection()
    if conn.dialect.name == "postgresql":
        raw = conn.connection.driver_connection
        with raw.cursor() as cur:  # type: ignore[union-attr]
            with cur.copy(
                "COPY records (upload_num, seq, partnership_id, ref, self_sealed, partner_sealed)"
                " FROM STDIN (FORMAT BINARY)"
            ) as copy:
                copy.set_types(["integer", "bigint", "uuid", "varchar", "bytea", "bytea"])
                for row in chunk.record_rows:
                    copy.write_row(row)
            with cur.copy(
                "COPY tokens (upload_num, kind, value, seq, partnership_id)"
                " FROM STDIN (FORMAT BINARY)"
            ) as copy:
                copy.set_types(["integer", "smallint", "bytea", "bigint", "uuid"])
                for row in chunk.token_rows:
                    copy.write_row(row)
        return
    # SQLite: the driver's executemany on the session's own connection (same
    # transaction), skipping per-row ORM/Core processing; UUIDs as SQLAlchemy stores them.
    raw = conn.connection.driver_connection
    pid_hex = chunk.record_rows[0][2].hex if chunk.record_rows else None
    raw.executemany(  # type: ignore[union-attr]
        "INSERT INTO records (upload_num, seq, partnership_id, ref, self_sealed, partner_sealed)"
        " VALUES (?, ?, ?, ?, ?, ?)",
        [(r[0], r[1], pid_hex, r[3], r[4], r[5]) for r in chunk.record_rows],
    )
    raw.executemany(  # type: ignore[union-attr]
        "INSERT INTO tokens (upload_num, kind, value, seq, partnership_id) VALUES (?, ?, ?, ?, ?)",
        [(t[0], t[1], t[2], t[3], pid_hex) for t in chunk.token_rows],
    )
