"""A dump of the database holds no usable API key."""

from __future__ import annotations

import shutil
import sqlite3
import subprocess
from pathlib import Path

import pytest


def dump_database(database_url: str) -> bytes:
    """Everything the database holds, as an attacker with a backup would see it."""
    if database_url.startswith("sqlite"):
        path = Path(database_url.split("///", 1)[1])
        raw = b"".join(p.read_bytes() for p in path.parent.glob(path.name + "*"))
        with sqlite3.connect(path) as conn:
            text = "\n".join(conn.iterdump()).encode()
        return raw + text
    if not shutil.which("pg_dump"):
        pytest.skip("pg_dump is not installed")
    dsn = database_url.replace("postgresql+psycopg://", "postgresql://")
    return subprocess.run(["pg_dump", "--data-only", dsn], capture_output=True, check=True).stdout


def test_dump_holds_no_plaintext_api_key(client, tenants, database_url):
    extra = client.post(
        "/v1/api-keys", json={"name": "x", "role": "uploader"}, headers=tenants.a.headers()
    )
    keys = [*tenants.a.keys.values(), *tenants.b.keys.values(), extra.json()["key"]]
    dump = dump_database(database_url)
    assert b"acme" in dump  # the dump is real: it does hold company slugs
    for key in keys:
        secret_part = key[12:].encode()  # everything after the displayed prefix
        assert key.encode() not in dump
        assert secret_part not in dump
