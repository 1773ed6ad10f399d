"""Chunks of one upload sent concurrently (the SDK keeps two PUTs in flight), on both
databases: every chunk is stored once, identical re-sends racing each other are no-ops,
a ref repeated across two racing chunks is refused by the commit, and a commit racing
the chunks either finds chunks missing or sees them all — never a partial list."""

from __future__ import annotations

import random
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest
from sqlalchemy import func, select

from service.models import Upload, records, tokens
from tests.test_uploads import pair  # noqa: F401  (fixture)
from tests.uploads import manifest, match_pairs, ndjson, record, upload, wait_jobs

CT = {"content-type": "application/x-ndjson"}
CHUNKS, PER_CHUNK = 12, 40


def _count(app, table, upload_num: int) -> int:
    with app.state.sessionmaker() as s:
        return s.execute(
            select(func.count()).select_from(table).where(table.c.upload_num == upload_num)
        ).scalar_one()


def _upload_num(app, upload_id: str) -> int:
    import uuid

    with app.state.sessionmaker() as s:
        return s.execute(select(Upload.num).where(Upload.id == uuid.UUID(upload_id))).scalar_one()


def _chunks() -> list[bytes]:
    return [
        ndjson([record(f"r{c * PER_CHUNK + i}", [c * PER_CHUNK + i]) for i in range(PER_CHUNK)])
        for c in range(CHUNKS)
    ]


def _stage(client, tenant, pid, chunks, records_):
    h = tenant.headers("uploader")
    r = client.post(
        f"/v1/partnerships/{pid}/uploads",
        headers=h,
        json=manifest(client, tenant, pid, "customers", chunks, records_),
    )
    assert r.status_code == 201, r.text
    return r.json(), h


def test_chunks_sent_concurrently_are_all_stored_once(client, tenants, app, pair):  # noqa: F811
    chunks = _chunks()
    up, h = _stage(client, tenants.a, pair, chunks, CHUNKS * PER_CHUNK)
    # every chunk twice (an identical re-send racing the first), in a shuffled order
    work = [n for n in range(CHUNKS) for _ in range(2)]
    random.Random(5).shuffle(work)

    def put(n: int):
        return n, client.put(
            f"/v1/uploads/{up['id']}/chunks/{n}", content=chunks[n], headers={**h, **CT}
        )

    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(put, work))
    for n, r in results:
        assert r.status_code == 200, (n, r.text)
    fresh = sorted(n for n, r in results if not r.json()["duplicate"])
    assert fresh == list(range(CHUNKS))  # each chunk stored exactly once
    got = client.get(f"/v1/uploads/{up['id']}", headers=h).json()
    assert got["received_chunks"] == list(range(CHUNKS))
    assert got["received_records"] == CHUNKS * PER_CHUNK
    assert client.post(f"/v1/uploads/{up['id']}/commit", headers=h).status_code == 200
    num = _upload_num(app, up["id"])
    assert _count(app, records, num) == _count(app, tokens, num) == CHUNKS * PER_CHUNK
    # and it matches like a list sent one chunk at a time
    upload(client, tenants.b, pair, "customers", [[i] for i in range(0, 2 * PER_CHUNK, 2)])
    wait_jobs(app)
    assert match_pairs(app, pair) == {(f"r{2 * i}", f"r{i}") for i in range(PER_CHUNK)}


def test_a_ref_repeated_across_racing_chunks_is_refused_at_commit(client, tenants, app, pair):  # noqa: F811
    # two refs in common, in opposite orders (fillers widen the window in which both
    # requests store at once)
    refs0 = ["x", *(f"a{i}" for i in range(2000)), "y"]
    refs1 = ["y", *(f"b{i}" for i in range(2000)), "x"]
    c0 = ndjson([record(ref, [i]) for i, ref in enumerate(refs0)])
    c1 = ndjson([record(ref, [10_000 + i]) for i, ref in enumerate(refs1)])
    up, h = _stage(client, tenants.a, pair, [c0, c1], len(refs0) + len(refs1))
    start = threading.Barrier(2)

    def put(n: int, body: bytes):
        start.wait()
        return client.put(f"/v1/uploads/{up['id']}/chunks/{n}", content=body, headers={**h, **CT})

    with ThreadPoolExecutor(2) as pool:
        rs = list(pool.map(put, [0, 1], [c0, c1]))
    assert [r.status_code for r in rs] == [200, 200], [r.text for r in rs]
    r = client.post(f"/v1/uploads/{up['id']}/commit", headers=h)
    assert r.status_code == 422 and r.json()["errors"][0]["field"] == "ref", r.text
    assert r.json()["errors"][0]["chunks"] == [0, 1]
    assert client.get(f"/v1/uploads/{up['id']}", headers=h).json()["status"] == "staged"


def test_a_commit_racing_the_chunks_never_commits_a_partial_list(client, tenants, app, pair):  # noqa: F811
    for attempt in range(3):
        chunks = _chunks()
        up, h = _stage(client, tenants.a, pair, chunks, CHUNKS * PER_CHUNK)
        # all chunks but the last first, then the last one racing the commit
        for n in range(CHUNKS - 1):
            r = client.put(
                f"/v1/uploads/{up['id']}/chunks/{n}", content=chunks[n], headers={**h, **CT}
            )
            assert r.status_code == 200, r.text
        start = threading.Barrier(2)

        def last(up=up, h=h, chunks=chunks):
            start.wait()
            return client.put(
                f"/v1/uploads/{up['id']}/chunks/{CHUNKS - 1}",
                content=chunks[-1],
                headers={**h, **CT},
            )

        def commit(up=up, h=h):
            start.wait()
            return client.post(f"/v1/uploads/{up['id']}/commit", headers=h)

        with ThreadPoolExecutor(2) as pool:
            f_last, f_commit = pool.submit(last), pool.submit(commit)
            r_last, r_commit = f_last.result(), f_commit.result()
        num = _upload_num(app, up["id"])
        if r_commit.status_code == 200:
            # the chunk was stored before the commit looked: the list is complete
            assert r_last.status_code == 200 and not r_last.json()["duplicate"]
        else:
            assert r_commit.status_code == 409 and "not received" in r_commit.json()["detail"]
            assert r_last.status_code == 200, r_last.text
            r_commit = client.post(f"/v1/uploads/{up['id']}/commit", headers=h)
            assert r_commit.status_code == 200, r_commit.text
        assert r_commit.json()["status"] == "committed"
        assert _count(app, records, num) == CHUNKS * PER_CHUNK, attempt
        # a chunk arriving after the commit is refused and changes nothing
        r = client.put(f"/v1/uploads/{up['id']}/chunks/0", content=chunks[0], headers={**h, **CT})
        assert r.status_code == 409 and "committed" in r.json()["detail"]


def test_no_write_lock_is_held_while_a_chunk_body_arrives(
    client,
    tenants,
    app,
    pair,  # noqa: F811
    backend,
    database_url,
    monkeypatch,
):
    """SQLite has one write lock for the whole database: a chunk request must not hold
    it (from its key lookup on) while its body is still on the way, or one slow upload
    stops every other writer of every company."""
    if backend != "sqlite":
        pytest.skip("SQLite's database-wide write lock")
    import sqlite3

    from starlette.requests import Request

    path = database_url.split("///", 1)[1]
    original = Request.body
    seen: list[str] = []

    async def body(self: Request) -> bytes:
        if "/chunks/" in self.url.path:
            # another writer, waiting up to 2 s (the embedded worker's polls hold the lock
            # for milliseconds; the request itself would hold it until this returns)
            con = sqlite3.connect(path, timeout=2, isolation_level=None)
            try:
                con.execute("BEGIN IMMEDIATE")
                con.execute("ROLLBACK")
                seen.append("free")
            except sqlite3.OperationalError as exc:
                seen.append(str(exc))
            finally:
                con.close()
        return await original(self)

    monkeypatch.setattr(Request, "body", body)
    chunks = _chunks()[:2]
    up, h = _stage(client, tenants.a, pair, chunks, 2 * PER_CHUNK)
    for n, chunk in enumerate(chunks):
        r = client.put(f"/v1/uploads/{up['id']}/chunks/{n}", content=chunk, headers=h | CT)
        assert r.status_code == 200, r.text
    assert seen == ["free", "free"]
    r = client.post(f"/v1/uploads/{up['id']}/commit", headers=h)
    assert r.status_code == 200, r.text
