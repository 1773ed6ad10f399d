"""The match job joins a pair of committed uploads once per set of token kinds.

Both companies' commits queue a match job; when both lists are committed before the first
job runs, the first matches the pair and the second must find it done instead of joining
the same two lists again (2 s each at 1M x 1M on PostgreSQL). A change of the kinds (both
policies now match names) must still re-match. The app here has no embedded worker: the
test runs the jobs and counts the join statements they send.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import event, select

import service.overlap.service  # noqa: F401  (registers the match handler)
from service import jobs
from service.main import create_app
from service.models import Upload, match_counts
from service.overlap.service import _in_token_order
from service.upload.ingest import KIND_CODES, in_token_order
from tests.conftest import partner_up
from tests.uploads import match_pairs, record, token, upload


@pytest.fixture
def quiet(app) -> Iterator[TestClient]:  # type: ignore[no-untyped-def]
    settings = app.state.settings.model_copy(update={"embedded_worker": False})
    with TestClient(create_app(settings), raise_server_exceptions=False) as c:
        yield c
    c.app.state.engine.dispose()  # type: ignore[attr-defined]


def _policy(client: TestClient, tenant, pid: str, match_on: list[str]) -> None:  # type: ignore[no-untyped-def]
    r = client.put(
        f"/v1/partnerships/{pid}/policy",
        headers=tenant.headers(),
        json={
            "default": "hidden",
            "match_on": match_on,
            "populations": {"customers": {"share": "overlap", "fields": ["name"]}},
        },
    )
    assert r.status_code in (200, 201), r.text


def _upload(client: TestClient, tenant, pid: str, recs: list[dict]) -> None:  # type: ignore[no-untyped-def]
    _, r = upload(
        client, tenant, pid, "customers", [], records=recs, token_kinds=["domain", "name"]
    )
    assert r.status_code == 200, r.text


DOMAIN, NAME = 1 << KIND_CODES["domain"], 1 << KIND_CODES["name"]  # match_counts.kinds bits


# r0 shares a domain, r1 only a name, r2 nothing
A = [record("a0", ["d0"]), record("a1", ["n1"], kind="name"), record("a2", ["d2"])]
B = [record("b0", ["d0"]), record("b1", ["n1"], kind="name"), record("b2", ["x2"])]


def _drain(client: TestClient) -> tuple[int, list[str]]:
    """(jobs run, join statements sent) while the queue drains."""
    sent: list[str] = []

    def seen(conn, cursor, statement, *args) -> None:  # type: ignore[no-untyped-def]
        if statement.startswith("INSERT INTO matches"):
            sent.append(statement)

    engine = client.app.state.engine  # type: ignore[attr-defined]
    event.listen(engine, "before_cursor_execute", seen)
    try:
        ran = jobs.drain(client.app.state.sessionmaker, client.app.state.settings)  # type: ignore[attr-defined]
    finally:
        event.remove(engine, "before_cursor_execute", seen)
    return ran, sent


def _run_jobs(client: TestClient) -> tuple[int, int]:
    ran, sent = _drain(client)
    return ran, len(sent)


def _requeue_b(client: TestClient, tenant) -> None:  # type: ignore[no-untyped-def]
    with client.app.state.sessionmaker.begin() as s:  # type: ignore[attr-defined]
        up = s.execute(select(Upload).where(Upload.company_id == tenant.id)).scalar_one()
        jobs.enqueue(s, "match", partnership_id=up.partnership_id, upload_num=up.num)


def _kinds(client: TestClient) -> set[int | None]:
    with client.app.state.sessionmaker() as s:  # type: ignore[attr-defined]
        return set(s.execute(select(match_counts.c.kinds)).scalars())


def _pair_with_policies(client: TestClient, tenants) -> str:  # type: ignore[no-untyped-def]
    pid = partner_up(client, tenants.a, tenants.b)
    for t in (tenants.a, tenants.b):
        client.post(
            "/v1/populations", json={"slug": "customers", "kind": "customers"}, headers=t.headers()
        )
        _policy(client, t, pid, ["domain"])
    return pid


def test_a_pair_committed_before_its_jobs_is_joined_once(quiet, tenants):
    pid = _pair_with_policies(quiet, tenants)
    _upload(quiet, tenants.a, pid, A)
    _upload(quiet, tenants.b, pid, B)
    assert _run_jobs(quiet) == (2, 1)  # two jobs, one join: the second found the pair done
    assert match_pairs(quiet.app, pid) == {("a0", "b0")}
    assert _kinds(quiet) == {DOMAIN}
    _requeue_b(quiet, tenants.b)  # the same kinds again: nothing to redo
    assert _run_jobs(quiet) == (1, 0)
    assert match_pairs(quiet.app, pid) == {("a0", "b0")}


def test_changed_kinds_rematch_the_pair(quiet, tenants):
    pid = partner_up(quiet, tenants.a, tenants.b)
    for t in (tenants.a, tenants.b):
        quiet.post(
            "/v1/populations", json={"slug": "customers", "kind": "customers"}, headers=t.headers()
        )
    _policy(quiet, tenants.a, pid, ["domain", "name"])
    _policy(quiet, tenants.b, pid, ["domain"])  # names are matched only when both agree
    _upload(quiet, tenants.a, pid, A)
    _upload(quiet, tenants.b, pid, B)
    _run_jobs(quiet)
    assert match_pairs(quiet.app, pid) == {("a0", "b0")}
    assert _kinds(quiet) == {DOMAIN}
    _policy(quiet, tenants.b, pid, ["domain", "name"])
    _requeue_b(quiet, tenants.b)
    assert _run_jobs(quiet) == (1, 1)
    assert match_pairs(quiet.app, pid) == {("a0", "b0"), ("a1", "b1")}
    assert _kinds(quiet) == {DOMAIN | NAME}
    with quiet.app.state.sessionmaker() as s:  # type: ignore[attr-defined]
        (row,) = s.execute(
            select(match_counts.c.a_records, match_counts.c.b_records).where(
                match_counts.c.partnership_id == uuid.UUID(pid)
            )
        ).all()
    assert tuple(row) == (2, 2)


def _num(client: TestClient, tenant) -> int:  # type: ignore[no-untyped-def]
    with client.app.state.sessionmaker() as s:  # type: ignore[attr-defined]
        return s.execute(select(Upload.num).where(Upload.company_id == tenant.id)).scalar_one()


SHARED = [f"s{i}" for i in range(12)]


@pytest.mark.parametrize("order", ["tokens", "file"])
def test_lists_in_token_order_are_merged(quiet, tenants, backend, order):
    """Lists sent in token order, as the SDK sends them, are joined by the merge statement
    without DISTINCT on PostgreSQL; others by the DISTINCT one. Same pairs either way."""
    pid = _pair_with_policies(quiet, tenants)
    a = [f"a{i}" for i in range(20)] + SHARED
    b = SHARED + [f"b{i}" for i in range(20)]
    if order == "tokens":
        a, b = sorted(a, key=token), sorted(b, key=token)
    for t, values in ((tenants.a, a), (tenants.b, b)):
        _, r = upload(quiet, t, pid, "customers", [[v] for v in values], chunk_size=4)
        assert r.status_code == 200, r.text
    nums = [_num(quiet, t) for t in (tenants.a, tenants.b)]
    with quiet.app.state.sessionmaker() as s:  # type: ignore[attr-defined]
        assert [_in_token_order(s, n) for n in nums] == [order == "tokens"] * 2
    _, sent = _drain(quiet)
    assert match_pairs(quiet.app, pid) == {(f"r{a.index(v)}", f"r{b.index(v)}") for v in SHARED}
    if backend == "postgresql":
        assert ["DISTINCT" in q for q in sent] == [order == "file"]
    else:
        assert len(sent) == 1 and "ON CONFLICT DO NOTHING" in sent[0]


def test_a_pair_met_on_two_tokens_of_one_kind_is_matched_once(quiet, tenants, backend):
    """A record may hold several tokens of one kind; two of them meeting the same partner
    record give the pair twice. The merge statement is refused by the primary key of
    `matches` and the DISTINCT one stores the pair once, with nothing else lost."""
    pid = _pair_with_policies(quiet, tenants)
    for t, recs in (
        (tenants.a, [record("a0", ["d0", "d1"]), record("a1", ["d2"]), record("a2", ["d3"])]),
        (tenants.b, [record("b0", ["d1", "d0"]), record("b1", ["d2"]), record("b2", ["x"])]),
    ):
        _, r = upload(quiet, t, pid, "customers", [], records=recs)
        assert r.status_code == 200, r.text
    _, sent = _drain(quiet)
    assert match_pairs(quiet.app, pid) == {("a0", "b0"), ("a1", "b1")}
    if backend == "postgresql":  # one chunk each: in token order, so the merge came first
        assert ["DISTINCT" in q for q in sent] == [False, True]
    with quiet.app.state.sessionmaker() as s:  # type: ignore[attr-defined]
        counts = s.execute(select(match_counts.c.a_records, match_counts.c.b_records)).all()
    assert [tuple(c) for c in counts] == [(2, 2)]


def test_chunks_in_token_order() -> None:
    def k(i: int) -> bytes:
        return bytes([KIND_CODES["domain"]]) + i.to_bytes(16, "big")

    assert in_token_order([])
    assert in_token_order([(k(1), k(5)), (k(5), k(9))])  # a key on the boundary: seq decides
    assert not in_token_order([(k(1), k(5)), (k(4), k(9))])
    assert not in_token_order([(k(5), k(9)), (k(1), k(4))])
    assert not in_token_order([(k(1), k(5)), (None, None)])  # received before migration 0011
