"""The bad-input checklist of issue 8 item 8, upload half: each bad request against a
partnership that already holds a committed list is refused with a clear status and a
problem body naming the field or limit, and the committed list is untouched afterwards.

(Auth, roles, pagination, CSV and key-file cases are tested in test_auth.py,
test_tenancy.py, test_reports.py, test_sync.py and test_keyfile.py; folding them into
this one table is open work, see docs/reliability.md.)"""

from __future__ import annotations

import gzip
import re
from collections.abc import Callable
from typing import Any

import pytest

from tests.conftest import partner_up
from tests.uploads import b64, manifest, ndjson, record, upload

pytestmark = pytest.mark.usefixtures("no_network")


@pytest.fixture
def held(client, tenants):  # type: ignore[no-untyped-def]
    """A and B partnered; A has a committed `customers` list of 20 records."""
    pid = partner_up(client, tenants.a, tenants.b)
    for t in (tenants.a, tenants.b):
        client.post(
            "/v1/populations", json={"slug": "customers", "kind": "customers"}, headers=t.headers()
        )
    _, r = upload(client, tenants.a, pid, "customers", [[i] for i in range(20)])
    assert r is not None and r.status_code == 200, r.text if r is not None else ""
    return pid


def _committed(client, tenant, pid) -> list[tuple[str, int]]:  # type: ignore[no-untyped-def]
    st = client.get(f"/v1/partnerships/{pid}/status", headers=tenant.headers()).json()
    return [(s["population"], s["records"]) for s in st["mine"]]


def _stage(client, tenant, pid, chunks: list[bytes], records: int, **over: Any) -> str:  # type: ignore[no-untyped-def]
    r = client.post(
        f"/v1/partnerships/{pid}/uploads",
        json=manifest(client, tenant, pid, "customers", chunks, records, **over),
        headers=tenant.headers("uploader"),
    )
    assert r.status_code == 201, r.text
    return str(r.json()["id"])


def _put(client, tenant, uid: str, body: bytes, **headers: str):  # type: ignore[no-untyped-def]
    h = {**tenant.headers("uploader"), "content-type": "application/x-ndjson", **headers}
    return client.put(f"/v1/uploads/{uid}/chunks/0", content=body, headers=h)


def _bad_chunk(line: bytes) -> Callable[..., Any]:
    def run(client, tenant, pid):  # type: ignore[no-untyped-def]
        good = ndjson([record("r0", [1])])
        uid = _stage(client, tenant, pid, [good + line], 2, confirm_shrink=True)
        return _put(client, tenant, uid, good + line)

    return run


def _token(value: str) -> bytes:
    rec = record("r1", [2])
    rec["tokens"][0]["value"] = value
    return ndjson([rec])


def _dup_refs(client, tenant, pid):  # type: ignore[no-untyped-def]
    body = ndjson([record("same", [1]), record("same", [2])])
    uid = _stage(client, tenant, pid, [body], 2, confirm_shrink=True)
    return _put(client, tenant, uid, body)


def _content_type(client, tenant, pid):  # type: ignore[no-untyped-def]
    body = ndjson([record("r0", [1])])
    uid = _stage(client, tenant, pid, [body], 1, confirm_shrink=True)
    return _put(client, tenant, uid, body, **{"content-type": "text/csv"})


def _gzip(client, tenant, pid):  # type: ignore[no-untyped-def]
    body = ndjson([record("r0", [1])])
    uid = _stage(client, tenant, pid, [body], 1, confirm_shrink=True)
    return _put(client, tenant, uid, gzip.compress(body), **{"content-encoding": "gzip"})


def _commit_after(mangle: str) -> Callable[..., Any]:
    def run(client, tenant, pid):  # type: ignore[no-untyped-def]
        body = ndjson([record(f"r{i}", [i]) for i in range(20)])
        over: dict[str, Any] = {"record_count": 21} if mangle == "count" else {"digest": "0" * 64}
        uid = _stage(client, tenant, pid, [body], 20, **over)
        assert _put(client, tenant, uid, body).status_code == 200
        return client.post(f"/v1/uploads/{uid}/commit", headers=tenant.headers("uploader"))

    return run


def _shrink(client, tenant, pid):  # type: ignore[no-untyped-def]
    _, r = upload(client, tenant, pid, "customers", [[1]])
    return r


def _privileged_field(client, tenant, pid):  # type: ignore[no-untyped-def]
    body = ndjson([record("r0", [1])])
    m = manifest(client, tenant, pid, "customers", [body], 1, company_id="someone-else")
    return client.post(
        f"/v1/partnerships/{pid}/uploads", json=m, headers=tenant.headers("uploader")
    )


def _page(query: str) -> Callable[..., Any]:
    def run(client, tenant, pid):  # type: ignore[no-untyped-def]
        return client.get(
            f"/v1/partnerships/{pid}/reports/overlaps?{query}", headers=tenant.headers("reader")
        )

    return run


CASES: dict[str, tuple[Callable[..., Any], int, str]] = {
    "page limit 0": (_page("limit=0"), 422, r"limit"),
    "page limit -1": (_page("limit=-1"), 422, r"limit"),
    "page limit 10^9": (_page("limit=1000000000"), 422, r"limit"),
    "forged cursor": (_page("cursor=bm90LWEtY3Vyc29y"), 422, r"cursor"),
    "malformed NDJSON": (_bad_chunk(b'{"ref": "r9", "tokens": [\n'), 422, r"line 2"),
    "token of the wrong length": (_bad_chunk(_token(b64(b"x" * 15))), 422, r"16 bytes"),
    "token not base64url": (_bad_chunk(_token("*" * 22)), 422, r"base64"),
    "plaintext domain as a token": (_bad_chunk(_token("acme.com")), 422, r"plaintext|token"),
    "duplicate refs in a chunk": (_dup_refs, 422, r"ref"),
    "wrong content type": (_content_type, 415, r"x-ndjson|content.type"),
    "compressed body": (_gzip, 415, r"[Ee]ncoding|compress"),
    "record count mismatch": (_commit_after("count"), 422, r"record_count|count"),
    "digest mismatch": (_commit_after("digest"), 422, r"digest"),
    "shrinking a list without confirm_shrink": (_shrink, 409, r"confirm_shrink"),
    "privileged field in the manifest": (_privileged_field, 422, r"company_id"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_upload_input_is_refused_and_loses_nothing(case, client, tenants, held):  # type: ignore[no-untyped-def]
    before = _committed(client, tenants.a, held)
    assert before == [("customers", 20)]
    run, status, names = CASES[case]
    r = run(client, tenants.a, held)
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith("application/problem+json"), r.text
    assert re.search(names, r.text), r.text
    assert "bmk_" not in r.text
    assert _committed(client, tenants.a, held) == before
