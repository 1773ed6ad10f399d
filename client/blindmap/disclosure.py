"""The disclosure log's hash chain, computed alike by the escrow and by `blindmap
disclosures verify` (docs/protocol.md §10).

    entry_bytes = canonical JSON (sorted keys, compact, UTF-8) of the entry without its
                  `prev_hash` and `hash` fields; `created_at` as ISO 8601 UTC with
                  microseconds and a trailing "Z"
    hash        = hex(SHA256(ASCII(prev_hash) || 0x0a || entry_bytes))

The first entry of a partnership has `prev_hash` = 64 zeros.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from typing import Any

__all__ = ["GENESIS", "ChainError", "entry_hash", "format_time", "verify_chain"]

GENESIS = "0" * 64
_HASHED = (
    "seq",
    "partnership_id",
    "viewer",
    "owner",
    "report",
    "viewer_population",
    "owner_population",
    "records",
    "policy_versions",
    "created_at",
)


class ChainError(ValueError):
    """The chain is broken at `seq`: an entry was modified, inserted or removed."""

    def __init__(self, seq: int, message: str) -> None:
        super().__init__(f"entry {seq}: {message}")
        self.seq = seq


def format_time(at: datetime) -> str:
    return at.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _canonical(entry: Mapping[str, Any]) -> bytes:
    data = {}
    for key in _HASHED:
        value = entry.get(key)
        if isinstance(value, datetime):
            value = format_time(value)
        elif key == "partnership_id" and value is not None:
            value = str(value)
        data[key] = value
    return json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def entry_hash(prev_hash: str, entry: Mapping[str, Any]) -> str:
    return hashlib.sha256(prev_hash.encode("ascii") + b"\n" + _canonical(entry)).hexdigest()


def verify_chain(entries: Iterable[Mapping[str, Any]]) -> int:
    """Check entries given oldest first; returns how many were verified."""
    prev, expected_seq, n = GENESIS, 1, 0
    for e in entries:
        seq = int(e["seq"])
        if seq != expected_seq:
            raise ChainError(seq, f"expected entry {expected_seq}: an entry is missing")
        if not hmac.compare_digest(str(e["prev_hash"]), prev):
            raise ChainError(seq, "prev_hash does not match the previous entry's hash")
        at = e.get("created_at")
        if isinstance(at, str):
            # JSON writers drop a zero fraction ("…:05Z"); the hash is over "…:05.000000Z"
            try:
                e = {**e, "created_at": datetime.fromisoformat(at.replace("Z", "+00:00"))}
            except ValueError:
                raise ChainError(seq, f"created_at {at!r} is not an ISO 8601 time") from None
        if not hmac.compare_digest(str(e["hash"]), entry_hash(prev, e)):
            raise ChainError(seq, "hash does not match its content: the entry was modified")
        prev, expected_seq, n = str(e["hash"]), seq + 1, n + 1
    return n
