"""Local record of safety codes the user compared with a partner out of band.

Kept beside the key file (0600): which partner key was verified, and when. If the
escrow later serves a different key for that partner, the CLI says so loudly.
"""

from __future__ import annotations

import json
import os
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from blindmap import keyfile


def store_path(key_file: Path | None = None) -> Path:
    # Named after the key file: two companies' key files in one directory must not
    # share their verifications (they would hold each other's partner key).
    base = key_file or keyfile.default_key_path()
    return base.with_name(base.stem + ".verified.json")


def load(key_file: Path | None = None) -> dict[str, Any]:
    path = store_path(key_file)
    if not path.exists():
        return {}
    data = json.loads(path.read_text())
    return data if isinstance(data, dict) else {}


def record(
    partnership_id: str, *, partner: str, partner_key: str, my_key: str, key_file: Path | None
) -> dict[str, Any]:
    data = load(key_file)
    entry = {
        "partner": partner,
        "partner_public_key": partner_key,
        "my_public_key": my_key,
        "verified_at": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    data[partnership_id] = entry
    path = store_path(key_file)
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(data, f, indent=2, sort_keys=True)
    os.replace(tmp, path)
    return entry


def status(partnership_id: str, partner_key: str | None, key_file: Path | None) -> str:
    """'verified', 'unverified' or 'changed' (the partner key differs from the verified one)."""
    entry = load(key_file).get(partnership_id)
    if not entry:
        return "unverified"
    return "verified" if entry.get("partner_public_key") == partner_key else "changed"
