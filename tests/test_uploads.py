"""Staged, atomic uploads, their guards, and the match job, on both databases."""

from __future__ import annotations

import hashlib
import uuid
from datetime import timedelta

import pytest
from sqlalchemy import event, func, select, update

from service.models import Job, Upload, UploadChunk, matches, records, tokens, utcnow
from tests.conftest import partner_up
from tests.uploads import b64, digest, manifest, match_pairs, ndjson, record, upload, wait_jobs

CT = {"content-type": "application/x-ndjson"}


@pytest.fixture
def pair(client, tenants):
    """A and B partnered, each with a `customers` population, co-sell-like policies."""
    pid = partner_up(client, tenants.a, tenants.b)
    for t in (tenants.a, tenants.b):
        client.post(
            "/v1/populations", json={"slug": "customers", "kind": "customers"}, headers=t.headers()
        )
        client.put(
            f"/v1/partnerships/{pid}/policy",
            headers=t.headers(),
            json={
                "default": "hidden",
                "populations": {
                    "customers": {"share": "overlap", "fields": ["name", "owner_email"]}
                },
            },
        )
    return pid


def _count(app, table, **where) -> int:
    with app.state.sessionmaker() as s:
        stmt = select(func.count()).select_from(table)
        for k, v in where.items():
            stmt = stmt.where(table.c[k] == v)
        return s.execute(stmt).scalar_one()


def test_upload_commit_and_match(client, tenants, app, pair):
    a_vals = [[i] for i in range(10)]
    b_vals = [[i] for i in range(5, 15)]
    _, r = upload(client, tenants.a, pair, "customers", a_vals, chunk_size=4)
    assert r.status_code == 200 and r.json()["status"] == "committed"
    _, r = upload(client, tenants.b, pair, "customers", b_vals)
    assert r.status_code == 200
    wait_jobs(app)
    assert match_pairs(app, pair) == {(f"r{i}", f"r{i - 5}") for i in range(5, 10)}
    st = client.get(f"/v1/partnerships/{pair}/status", headers=tenants.a.headers("reader")).json()
    assert [(s["population"], s["records"]) for s in st["mine"]] == [("customers", 10)]
    assert [(s["population"], s["records"]) for s in st["partner"]] == [("customers", 10)]
    assert st["mine"][0]["match_job"] == "done" and not st["normalizer_mismatch"]


def test_resync_replaces_atomically_and_rematches(client, tenants, app, pair):
    upload(client, tenants.a, pair, "customers", [[i] for i in range(10)])
    upload(client, tenants.b, pair, "customers", [[i] for i in range(5, 15)])
    wait_jobs(app)
    first, _ = upload(
        client, tenants.a, pair, "customers", [[i] for i in range(7, 12)], commit=False
    )
    # while the new list is staged, readers still see the old one in full
    assert _count(app, matches) == 5
    r = client.post(f"/v1/uploads/{first['id']}/commit", headers=tenants.a.headers("uploader"))
    assert r.status_code == 200
    wait_jobs(app)
    assert match_pairs(app, pair) == {(f"r{i}", f"r{i + 7 - 5}") for i in range(5)}
    with app.state.sessionmaker() as s:
        statuses = sorted(
            u.status
            for u in s.execute(select(Upload).where(Upload.company_id == tenants.a.id)).scalars()
        )
    assert statuses == ["committed", "superseded"]
    # the superseded list's rows are gone, freed by a clean-up job after the commit
    assert _count(app, records) == 5 + 10
    assert _count(app, tokens) == 5 + 10
    with app.state.sessionmaker() as s:
        done = s.execute(select(Job.kind, Job.status).where(Job.kind == "drop_upload")).all()
    assert done == [("drop_upload", "done")]


def _drop_job(upload_num: int, status: str) -> Job:
    now = utcnow()
    return Job(
        kind="drop_upload",
        upload_num=upload_num,
        status=status,
        attempts=0,
        run_after=now,
        created_at=now,
    )


def _committed_nums(app) -> list[int]:
    with app.state.sessionmaker() as s:
        return list(s.execute(select(Upload.num).where(Upload.status == "committed")).scalars())


def test_clean_up_job_spares_live_lists_and_runs_twice_harmlessly(client, tenants, app, pair):
    upload(client, tenants.a, pair, "customers", [[i] for i in range(10)])
    upload(client, tenants.b, pair, "customers", [[i] for i in range(5, 15)])
    wait_jobs(app)
    staged, _ = upload(client, tenants.a, pair, "customers", [[i] for i in range(3)], commit=False)
    live = _committed_nums(app)
    with app.state.sessionmaker.begin() as s:
        staged_num = s.execute(
            select(Upload.num).where(Upload.id == uuid.UUID(staged["id"]))
        ).scalar_one()
        for num in [*live, staged_num, *live]:  # each live list twice
            s.add(_drop_job(num, "queued"))
    wait_jobs(app)
    assert _count(app, records) == 10 + 10 + 3 and _count(app, matches) == 5
    r = client.delete(f"/v1/uploads/{staged['id']}", headers=tenants.a.headers("uploader"))
    assert r.status_code == 204
    assert _count(app, records) == 20


def test_match_job_state_ignores_other_jobs_of_the_upload(client, tenants, app, pair):
    upload(client, tenants.a, pair, "customers", [[i] for i in range(4)])
    wait_jobs(app)
    (num,) = _committed_nums(app)
    with app.state.sessionmaker.begin() as s:
        s.add(_drop_job(num, "failed"))
    st = client.get(f"/v1/partnerships/{pair}/status", headers=tenants.a.headers("reader")).json()
    assert st["mine"][0]["match_job"] == "done"
    with app.state.sessionmaker() as s:
        up_id = s.execute(select(Upload.id).where(Upload.num == num)).scalar_one()
    r = client.get(f"/v1/uploads/{up_id}", headers=tenants.a.headers("uploader"))
    assert r.status_code == 200, r.text
    assert r.json()["match_job"] == "done"


def test_chunks_are_idempotent(client, tenants, pair):
    chunk = ndjson([record("x1", [1]), record("x2", [2])])
    h = tenants.a.headers("uploader")
    up = client.post(
        f"/v1/partnerships/{pair}/uploads",
        headers=h,
        json=manifest(client, tenants.a, pair, "customers", [chunk], 2),
    ).json()
    url = f"/v1/uploads/{up['id']}/chunks/0"
    first = client.put(url, content=chunk, headers={**h, **CT}).json()
    again = client.put(url, content=chunk, headers={**h, **CT}).json()
    assert not first["duplicate"] and again["duplicate"] and again["sha256"] == first["sha256"]
    other = ndjson([record("x1", [3]), record("x2", [2])])
    r = client.put(url, content=other, headers={**h, **CT})
    assert r.status_code == 409 and "different content" in r.json()["detail"]
    got = client.get(f"/v1/uploads/{up['id']}", headers=h).json()
    assert got["received_chunks"] == [0] and got["received_records"] == 2


@pytest.mark.parametrize(
    ("mutate", "field", "needle"),
    [
        (
            lambda r: r["tokens"][0].update(value=b64(b"x" * 15)),
            "tokens[0].value",
            "exactly 16 bytes",
        ),
        (
            lambda r: r["tokens"][0].update(value="acme.com"),
            "tokens[0].value",
            "looks like plaintext",
        ),
        (
            lambda r: r["tokens"][0].update(value="bob@acme.com"),
            "tokens[0].value",
            "looks like plaintext",
        ),
        (lambda r: r.update(ref="acme.com"), "ref", "looks like plaintext"),
        (lambda r: r.update(ref="x" * 65), "ref", "longer than 64"),
        (
            lambda r: r.update(
                tokens=[{"kind": "domain", "value": b64(bytes([i]) * 16)} for i in range(9)]
            ),
            "tokens",
            "more than 8",
        ),
        (lambda r: r.update(tokens=[]), "tokens", "non-empty"),
        (lambda r: r["tokens"][0].update(kind="name"), "tokens[0].kind", "token kinds"),
        (lambda r: r.update(self=b64(b"x" * 5000)), "self", "over the limit of 4096"),
        (lambda r: r.update(self=b64(b"x" * 10)), "self", "too short"),
        (lambda r: r.update(partner=b64(b"x" * 40)), "partner", "no sealed fields"),
        (lambda r: r.update(extra=1), "extra", "unknown field"),
    ],
)
def test_bad_records_are_rejected_naming_line_and_field(
    client, tenants, pair, mutate, field, needle
):
    recs = [record("ok1", [1]), record("ok2", [2])]
    mutate(recs[1])
    chunk = ndjson(recs)
    h = tenants.a.headers("uploader")
    up = client.post(
        f"/v1/partnerships/{pair}/uploads",
        headers=h,
        json=manifest(client, tenants.a, pair, "customers", [chunk], 2),
    ).json()
    r = client.put(f"/v1/uploads/{up['id']}/chunks/0", content=chunk, headers={**h, **CT})
    assert r.status_code == 422, r.text
    err = r.json()["errors"][0]
    assert err["line"] == 2 and err["field"] == field and needle in err["message"], err
    # nothing of the rejected chunk was stored
    assert client.get(f"/v1/uploads/{up['id']}", headers=h).json()["received_chunks"] == []


def test_commit_verifies_chunks_count_and_digest(client, tenants, pair):
    h = tenants.a.headers("uploader")
    c0, c1 = ndjson([record("a", [1])]), ndjson([record("b", [2])])
    up = client.post(
        f"/v1/partnerships/{pair}/uploads",
        headers=h,
        json=manifest(client, tenants.a, pair, "customers", [c0, c1], 2),
    ).json()
    client.put(f"/v1/uploads/{up['id']}/chunks/0", content=c0, headers={**h, **CT})
    r = client.post(f"/v1/uploads/{up['id']}/commit", headers=h)
    assert r.status_code == 409 and r.json()["missing_chunks"] == [1]
    assert (
        client.put(f"/v1/uploads/{up['id']}/chunks/2", content=c1, headers={**h, **CT}).status_code
        == 422
    )
    # a different chunk 1 than announced: the digest catches it
    client.put(
        f"/v1/uploads/{up['id']}/chunks/1", content=ndjson([record("b", [3])]), headers={**h, **CT}
    )
    r = client.post(f"/v1/uploads/{up['id']}/commit", headers=h)
    assert r.status_code == 422 and r.json()["errors"][0]["field"] == "digest"
    # wrong count
    up2 = client.post(
        f"/v1/partnerships/{pair}/uploads",
        headers=h,
        json=manifest(client, tenants.a, pair, "customers", [c0], 5),
    ).json()
    client.put(f"/v1/uploads/{up2['id']}/chunks/0", content=c0, headers={**h, **CT})
    r = client.post(f"/v1/uploads/{up2['id']}/commit", headers=h)
    assert r.status_code == 422 and r.json()["errors"][0]["field"] == "record_count"


def test_manifest_may_leave_chunk_count_and_digest_for_the_commit(client, tenants, app, pair):
    """docs/protocol.md §8.1: a manifest with chunk_count and digest null takes chunks
    while the client still builds them; the commit's body completes it, and every check
    of a full manifest still applies."""
    h = tenants.a.headers("uploader")
    cs = [ndjson([record("a", [1]), record("b", [2])]), ndjson([record("c", [3])])]
    deferred = {"chunk_count": None, "digest": None}

    def staged(records: int = 3) -> str:
        r = client.post(
            f"/v1/partnerships/{pair}/uploads",
            headers=h,
            json=manifest(client, tenants.a, pair, "customers", cs, records, **deferred),
        )
        assert r.status_code == 201, r.text
        assert r.json()["chunk_count"] is None
        return r.json()["id"]

    def put(uid: str, n: int, body: bytes) -> int:
        return client.put(
            f"/v1/uploads/{uid}/chunks/{n}", content=body, headers={**h, **CT}
        ).status_code

    def commit(uid: str, **body) -> dict:
        r = client.post(f"/v1/uploads/{uid}/commit", headers=h, json=body or None)
        return {**r.json(), "http": r.status_code}

    # one without the other is refused, naming the missing one
    for given, missing in (({"digest": None}, "digest"), ({"chunk_count": None}, "chunk_count")):
        body = manifest(client, tenants.a, pair, "customers", cs, 3, **given)
        r = client.post(f"/v1/partnerships/{pair}/uploads", headers=h, json=body)
        assert r.status_code == 422 and r.json()["errors"][0]["field"] == missing, r.text

    uid = staged()
    assert put(uid, 0, cs[0]) == 200 and put(uid, 1, cs[1]) == 200
    # chunk numbers are bounded by the record count (every chunk holds a record)
    assert put(uid, 3, cs[1]) == 422
    r = commit(uid)
    assert r["http"] == 422 and {e["field"] for e in r["errors"]} == {"chunk_count", "digest"}
    r = commit(uid, chunk_count=2, digest=digest(cs[::-1]))
    assert r["http"] == 422 and r["errors"][0]["field"] == "digest"
    r = commit(uid, chunk_count=1, digest=digest(cs[:1]))
    assert r["http"] == 422 and r["errors"][0]["field"] == "chunk_count", r
    r = commit(uid, chunk_count=0, digest=digest([]))
    assert r["http"] == 422 and "cannot hold 3 records" in r["detail"], r
    r = commit(uid, chunk_count=3, digest=digest([*cs, cs[1]]))
    assert r["http"] == 409 and r["missing_chunks"] == [2]
    # the refused commits left the manifest open
    assert client.get(f"/v1/uploads/{uid}", headers=h).json()["chunk_count"] is None
    r = commit(uid, chunk_count=2, digest=digest(cs))
    assert r["http"] == 200 and r["status"] == "committed" and r["chunk_count"] == 2, r
    assert r["record_count"] == 3 and _count(app, records, upload_num=_num(app, uid)) == 3

    # a full manifest takes the same values again at the commit, and no others
    full = client.post(
        f"/v1/partnerships/{pair}/uploads",
        headers=h,
        json=manifest(client, tenants.a, pair, "customers", cs, 3),
    ).json()["id"]
    assert put(full, 0, cs[0]) == 200 and put(full, 1, cs[1]) == 200
    r = commit(full, chunk_count=2, digest=digest(cs[:1] * 2))
    assert r["http"] == 422 and r["errors"][0]["field"] == "digest"
    r = commit(full, chunk_count=3, digest=digest(cs))
    assert r["http"] == 422 and r["errors"][0]["field"] == "chunk_count"
    assert commit(full, chunk_count=2, digest=digest(cs))["http"] == 200

    # a wrong record count is still caught
    short = staged(records=4)
    assert put(short, 0, cs[0]) == 200 and put(short, 1, cs[1]) == 200
    r = commit(short, chunk_count=2, digest=digest(cs))
    assert r["http"] == 422 and r["errors"][0]["field"] == "record_count"


def _num(app, uid: str) -> int:
    with app.state.sessionmaker() as s:
        return s.execute(select(Upload.num).where(Upload.id == uuid.UUID(uid))).scalar_one()


def test_duplicate_ref_across_chunks(client, tenants, pair):
    h = tenants.a.headers("uploader")
    c0, c1 = ndjson([record("same", [1])]), ndjson([record("same", [2])])
    up = client.post(
        f"/v1/partnerships/{pair}/uploads",
        headers=h,
        json=manifest(client, tenants.a, pair, "customers", [c0, c1], 2),
    ).json()
    assert (
        client.put(f"/v1/uploads/{up['id']}/chunks/0", content=c0, headers={**h, **CT}).status_code
        == 200
    )
    # each chunk is checked on arrival; a ref repeated across chunks is found by the commit
    r = client.put(f"/v1/uploads/{up['id']}/chunks/1", content=c1, headers={**h, **CT})
    assert r.status_code == 200
    r = client.post(f"/v1/uploads/{up['id']}/commit", headers=h)
    assert r.status_code == 422, r.text
    err = r.json()["errors"][0]
    assert err["field"] == "ref" and err["chunks"] == [0, 1]
    assert "'same' appears in chunks 0 and 1" in r.json()["detail"]
    got = client.get(f"/v1/uploads/{up['id']}", headers=h).json()
    assert got["status"] == "staged"  # nothing was committed; abort and upload again
    assert client.delete(f"/v1/uploads/{up['id']}", headers=h).status_code == 204


@pytest.mark.parametrize("case", ["repeated", "shared print", "no prints"])
def test_refs_across_chunks_are_checked_by_their_prints(client, tenants, app, pair, case):
    """The commit looks for repeats among the chunks' ref prints (8 bytes per ref); only
    two equal prints, or a chunk without prints (received before migration 0012), send
    it to the exact query over `records`."""
    h = tenants.a.headers("uploader")
    ref = "0123456789abcdef" * 2  # the SDK's shape: 32 hex digits
    other = ref if case != "shared print" else ref[:16] + "f" * 16
    c0, c1 = ndjson([record(ref, [1]), record("a" * 32, [3])]), ndjson([record(other, [2])])
    up = client.post(
        f"/v1/partnerships/{pair}/uploads",
        headers=h,
        json=manifest(client, tenants.a, pair, "customers", [c0, c1], 3),
    ).json()
    for n, c in enumerate((c0, c1)):
        r = client.put(f"/v1/uploads/{up['id']}/chunks/{n}", content=c, headers={**h, **CT})
        assert r.status_code == 200, r.text
    num = select(Upload.num).where(Upload.id == uuid.UUID(up["id"])).scalar_subquery()
    with app.state.sessionmaker.begin() as s:
        if case == "no prints":
            s.execute(
                update(UploadChunk).where(UploadChunk.upload_num == num).values(ref_prints=None)
            )
        prints = s.execute(select(UploadChunk.ref_prints).where(UploadChunk.upload_num == num))
        assert all((p is None) == (case == "no prints") for (p,) in prints)
    r = client.post(f"/v1/uploads/{up['id']}/commit", headers=h)
    if case == "shared print":  # two refs, one print: the exact query finds no repeat
        assert r.status_code == 200, r.text
        return
    assert r.status_code == 422, r.text
    assert r.json()["errors"][0]["chunks"] == [0, 1]
    assert f"'{ref}' appears in chunks 0 and 1" in r.json()["detail"]


def test_unique_refs_commit_without_reading_records(client, tenants, app, pair):
    """Refs whose prints all differ are unique: the commit reads no ref from `records`."""
    seen: list[str] = []

    def spy(conn, cursor, statement, *args):
        seen.append(statement)

    engine = app.state.sessionmaker.kw["bind"]
    refs = [hashlib.sha256(str(i).encode()).hexdigest()[:32] for i in range(30)]
    recs = [record(r, [i]) for i, r in enumerate(refs)]
    up, _ = upload(
        client, tenants.a, pair, "customers", [], records=recs, chunk_size=7, commit=False
    )
    event.listen(engine, "before_cursor_execute", spy)
    try:
        r = client.post(f"/v1/uploads/{up['id']}/commit", headers=tenants.a.headers("uploader"))
    finally:
        event.remove(engine, "before_cursor_execute", spy)
    assert r.status_code == 200, r.text
    assert any("ref_prints" in s for s in seen)
    assert not [s for s in seen if "FROM records" in s and "ref" in s.split("FROM records")[0]]


def test_manifest_guards(client, tenants, pair, app):
    h = tenants.a.headers("uploader")
    base = manifest(client, tenants.a, pair, "customers", [b"x"], 1)
    cases = [
        ({"key_epochs": {"mine": 0, "partner": 1}}, 409, "rotated"),
        ({"sealed_fields": ["name", "revenue"]}, 422, "revenue"),
        ({"record_count": 10_000_000, "chunk_count": 1000}, 413, "population size cap"),
        ({"population": "nope"}, 404, "nope"),
        ({"token_kinds": ["name"]}, 422, "domain"),
        ({"chunk_count": 0}, 422, "chunks cannot hold"),
    ]
    for over, status, needle in cases:
        r = client.post(f"/v1/partnerships/{pair}/uploads", headers=h, json={**base, **over})
        assert r.status_code == status and needle in r.text, (over, r.text)
    r = client.post(
        f"/v1/partnerships/{pair}/uploads", headers=tenants.a.headers("reader"), json=base
    )
    assert r.status_code == 403


def test_shrink_and_empty_replacement_need_confirmation(client, tenants, pair):
    upload(client, tenants.a, pair, "customers", [[i] for i in range(10)])
    _, r = upload(client, tenants.a, pair, "customers", [[i] for i in range(4)])
    assert r.status_code == 409 and "confirm_shrink" in r.json()["detail"]
    _, r = upload(client, tenants.a, pair, "customers", [[i] for i in range(6)])
    assert r.status_code == 200  # 40% smaller is within the default 50%
    empty_up = client.post(
        f"/v1/partnerships/{pair}/uploads",
        headers=tenants.a.headers("uploader"),
        json=manifest(client, tenants.a, pair, "customers", [], 0),
    ).json()
    r = client.post(f"/v1/uploads/{empty_up['id']}/commit", headers=tenants.a.headers("uploader"))
    assert r.status_code == 409
    _, r = upload(client, tenants.a, pair, "customers", [], confirm_shrink=True)
    assert r.status_code == 200 and r.json()["record_count"] == 0


def test_daily_commit_limit(client, tenants, pair, app):
    from fastapi.testclient import TestClient

    from service.config import Settings
    from service.main import create_app
    from tests.conftest import TEST_SECRET

    strict = Settings(
        env="test",
        secret_key=TEST_SECRET,
        database_url=app.state.settings.database_url,
        max_commits_per_day=2,
        embedded_worker=False,
    )
    with TestClient(create_app(strict)) as c:
        for _ in range(2):
            assert upload(c, tenants.a, pair, "customers", [[1], [2]])[1].status_code == 200
        _, r = upload(c, tenants.a, pair, "customers", [[1], [2]])
        assert r.status_code == 429 and int(r.headers["retry-after"]) > 0
        assert "limit is 2" in r.json()["detail"]
        # the partner sees the blocked attempt in the shared disclosure log
        log = c.get(f"/v1/partnerships/{pair}/disclosures", headers=tenants.b.headers()).json()
        blocked = [e for e in log["items"] if e["report"] == "blocked:commit-limit"]
        assert len(blocked) == 1 and blocked[0]["viewer"] == "acme"
        assert blocked[0]["viewer_population"] == "customers"


def test_abort_and_reap(client, tenants, pair, app):
    from service.upload import service as uploads

    up, _ = upload(client, tenants.a, pair, "customers", [[1], [2]], commit=False)
    assert (
        client.delete(f"/v1/uploads/{up['id']}", headers=tenants.a.headers("uploader")).status_code
        == 204
    )
    assert (
        client.get(f"/v1/uploads/{up['id']}", headers=tenants.a.headers("uploader")).json()[
            "status"
        ]
        == "aborted"
    )
    up2, _ = upload(client, tenants.a, pair, "customers", [[1], [2]], commit=False)
    assert _count(app, records) == 2
    with app.state.sessionmaker.begin() as s:
        s.execute(update(Upload).values(created_at=utcnow() - timedelta(days=2)))
    with app.state.sessionmaker.begin() as s:
        assert uploads.reap(s, app.state.settings) == 1
    assert _count(app, records) == 0 and _count(app, tokens) == 0
    r = client.put(
        f"/v1/uploads/{up2['id']}/chunks/0",
        content=b"",
        headers={**tenants.a.headers("uploader"), **CT},
    )
    assert r.status_code == 409


def test_normalizer_mismatch_is_not_matched_and_reported(client, tenants, app, pair):
    upload(client, tenants.a, pair, "customers", [[1], [2]])
    upload(client, tenants.b, pair, "customers", [[1], [2]], normalizer_version="n0-old")
    wait_jobs(app)
    assert match_pairs(app, pair) == set()
    st = client.get(f"/v1/partnerships/{pair}/status", headers=tenants.b.headers()).json()
    assert st["normalizer_mismatch"] and "n0-old" in st["warnings"][0]


def test_partner_hidden_population_is_not_in_status(client, tenants, app, pair):
    client.post(
        "/v1/populations", json={"slug": "secret", "kind": "prospects"}, headers=tenants.a.headers()
    )
    upload(client, tenants.a, pair, "secret", [[1]])
    st = client.get(f"/v1/partnerships/{pair}/status", headers=tenants.b.headers()).json()
    assert "secret" not in str(st)
    mine = client.get(f"/v1/partnerships/{pair}/status", headers=tenants.a.headers()).json()
    assert [s["population"] for s in mine["mine"]] == ["secret"]


def test_end_deletes_uploads_and_matches(client, tenants, app, pair):
    upload(client, tenants.a, pair, "customers", [[i] for i in range(10)])
    upload(client, tenants.b, pair, "customers", [[i] for i in range(5, 15)])
    wait_jobs(app)
    r = client.post(f"/v1/partnerships/{pair}/end", headers=tenants.a.headers())
    deleted = r.json()["deleted"]
    assert deleted["records"] == 20 and deleted["tokens"] == 20 and deleted["matches"] == 5
    assert deleted["uploads"] == 2
    for table in (records, tokens, matches):
        assert _count(app, table, partnership_id=uuid.UUID(pair)) == 0


def test_population_delete_removes_its_uploads(client, tenants, app, pair):
    upload(client, tenants.a, pair, "customers", [[1], [2]])
    assert (
        client.delete("/v1/populations/customers", headers=tenants.a.headers()).status_code == 204
    )
    assert _count(app, records) == 0 and _count(app, tokens) == 0


def test_failed_job_is_retried_and_a_dead_workers_job_reclaimed(client, tenants, app, pair):
    from service import jobs

    calls = []
    real = jobs.HANDLERS["match"]

    def flaky(session, job):
        calls.append(job.id)
        if len(calls) == 1:
            raise RuntimeError("transient")
        real(session, job)

    jobs.HANDLERS["match"] = flaky
    try:
        settings = app.state.settings.model_copy(update={"job_max_attempts": 3})
        upload(client, tenants.a, pair, "customers", [[1]])
        app.state.worker.stop()  # run jobs by hand from here on
        jobs.drain(app.state.sessionmaker, settings)
        with app.state.sessionmaker.begin() as s:
            job = s.execute(select(Job)).scalar_one()
            if job.status == "queued":  # the first attempt failed and is waiting its backoff
                job.run_after = job.created_at
        jobs.drain(app.state.sessionmaker, settings)
        with app.state.sessionmaker() as s:
            job = s.execute(select(Job)).scalar_one()
            assert job.status == "done" and job.attempts >= 2
        # a job stuck in 'running' by a worker that died is claimed again after the lease
        with app.state.sessionmaker.begin() as s:
            job = s.execute(select(Job)).scalar_one()
            job.status, job.locked_by = "running", "dead-worker"
            job.locked_at = job.created_at - timedelta(hours=1)
        assert jobs.drain(app.state.sessionmaker, settings) == 1
    finally:
        jobs.HANDLERS["match"] = real


def test_population_cap_trip_is_visible_to_the_partner(client, tenants, pair):
    h = tenants.a.headers("uploader")
    base = manifest(client, tenants.a, pair, "customers", [b"x"], 1)
    r = client.post(
        f"/v1/partnerships/{pair}/uploads",
        headers=h,
        json={**base, "record_count": 10_000_000, "chunk_count": 1000},
    )
    assert r.status_code == 413 and r.json()["limit_records"] == 2_000_000
    log = client.get(
        f"/v1/partnerships/{pair}/disclosures", headers=tenants.b.headers("reader")
    ).json()
    assert [e["report"] for e in log["items"]] == ["blocked:population-cap"]
