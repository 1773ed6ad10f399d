"""Helpers that build protocol-valid uploads for the service tests (no SDK sync needed)."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import time

from blindmap.normalize import NORMALIZER_VERSION


def b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def token(value: str | int) -> bytes:
    """A stand-in 16-byte token: equal inputs give equal tokens on both sides."""
    return hashlib.sha256(f"tok:{value}".encode()).digest()[:16]


def record(
    ref: str, values: list[str | int], *, partner: bool = False, kind: str = "domain"
) -> dict:
    return {
        "ref": ref,
        "tokens": [{"kind": kind, "value": b64(token(v))} for v in values],
        "self": b64(os.urandom(40)),
        "partner": b64(os.urandom(40)) if partner else None,
    }


def ndjson(recs: list[dict]) -> bytes:
    return b"".join(json.dumps(r, separators=(",", ":")).encode() + b"\n" for r in recs)


def digest(chunks: list[bytes]) -> str:
    return hashlib.sha256(b"".join(hashlib.sha256(c).digest() for c in chunks)).hexdigest()


def manifest(
    client, tenant, pid: str, population: str, chunks: list[bytes], records: int, **over
) -> dict:
    p = client.get(f"/v1/partnerships/{pid}", headers=tenant.headers()).json()
    body = {
        "population": population,
        "normalizer_version": NORMALIZER_VERSION,
        "token_kinds": ["domain"],
        "sealed_fields": [],
        "key_epochs": {"mine": p["me"]["key_epoch"], "partner": p["partner"]["key_epoch"]},
        "record_count": records,
        "chunk_count": len(chunks),
        "digest": digest(chunks),
    }
    body.update(over)
    return body


def upload(
    client,
    tenant,
    pid: str,
    population: str,
    values: list[list[str | int]],
    *,
    chunk_size: int = 1000,
    commit: bool = True,
    role: str = "uploader",
    records: list[dict] | None = None,
    **over,
):
    """Stage, send and (by default) commit a list; returns (upload json, last response).
    `records` (built with `record`) replaces the one-record-per-value list."""
    recs = records or [
        record(f"r{i}", v, partner=bool(over.get("sealed_fields"))) for i, v in enumerate(values)
    ]
    chunks = [ndjson(recs[i : i + chunk_size]) for i in range(0, len(recs), chunk_size)]
    h = tenant.headers(role)
    r = client.post(
        f"/v1/partnerships/{pid}/uploads",
        json=manifest(client, tenant, pid, population, chunks, len(recs), **over),
        headers=h,
    )
    assert r.status_code == 201, r.text
    up = r.json()
    for n, c in enumerate(chunks):
        rc = client.put(
            f"/v1/uploads/{up['id']}/chunks/{n}",
            content=c,
            headers={**h, "content-type": "application/x-ndjson"},
        )
        assert rc.status_code == 200, rc.text
    if not commit:
        return up, None
    r = client.post(f"/v1/uploads/{up['id']}/commit", headers=h)
    return up, r


def wait_jobs(app, timeout: float = 20.0) -> None:
    """Run queued jobs now (the embedded worker may also be running them)."""
    from service import jobs  # drain() registers the handlers

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        jobs.drain(app.state.sessionmaker, app.state.settings)
        with app.state.sessionmaker() as s:
            from sqlalchemy import select

            from service.models import Job

            pending = (
                s.execute(select(Job).where(Job.status.in_(("queued", "running")))).scalars().all()
            )
        if not pending:
            return
        time.sleep(0.05)
    raise AssertionError("jobs did not finish")


def match_pairs(app, pid: str) -> set[tuple[str, str]]:
    """Matched (a_ref, b_ref) pairs of a partnership, read straight from the tables."""
    import uuid

    from sqlalchemy import select

    from service.models import matches, records

    ra, rb = records.alias("ra"), records.alias("rb")
    with app.state.sessionmaker() as s:
        rows = s.execute(
            select(ra.c.ref, rb.c.ref)
            .select_from(matches)
            .join(ra, (ra.c.upload_num == matches.c.a_upload) & (ra.c.seq == matches.c.a_seq))
            .join(rb, (rb.c.upload_num == matches.c.b_upload) & (rb.c.seq == matches.c.b_seq))
            .where(matches.c.partnership_id == uuid.UUID(pid))
        ).all()
    return {(a, b) for a, b in rows}
