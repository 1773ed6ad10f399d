"""The bad-input checklist of issue 8 item 8 as tables: each bad request or command is
refused with the expected status or exit code and a message naming the field, line or
limit, carries no API key or key material, and leaves the committed data as it was.

- `test_bad_request_is_refused_and_loses_nothing` (API, both databases): A and B are
  partnered and A has a committed `customers` list of 20 records. Compared before and
  after each case: A's committed lists (records and commit time), the upload, A's
  summary report, populations, partnerships and API keys.
- `test_bad_cli_input_is_refused_and_loses_nothing`: the `blindmap` CLI (CSV files, key
  file, URL) after a first good `blindmap sync`; compared: the committed list.
- `test_bad_company_name_is_refused`: the operator's `blindmap-server create-company`.
- `test_sdk_sends_the_key_over_plain_http_to_this_machine_only`: the SDK's base URL.

A log record carrying an API key or key material fails any test (tests/conftest.py
`_SecretTrap`, issue 8 item 9), so "no secret in the logs" holds for every case here."""

from __future__ import annotations

import gzip
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import httpx
import pytest
from click.testing import CliRunner
from sqlalchemy import func, select

from blindmap import cli
from tests.conftest import TEST_SECRET, Tenant, make_tenant, partner_up
from tests.test_sync_e2e import partnered  # noqa: F401  (a fixture)
from tests.uploads import b64, digest, manifest, ndjson, record, upload, wait_jobs

pytestmark = pytest.mark.usefixtures("no_network")
_REAL_CLI_CLIENT = cli.State.client  # `as_company` swaps it for the in-process app


# --------------------------------------------------------------------------- the world
@dataclass
class World:
    """A and B partnered (`pid`); A's committed `customers` list is `upload_id`. What
    else a case needs (`Case.needs`) is made on first use, before the snapshot."""

    client: Any
    a: Tenant
    b: Tenant
    pid: str
    upload_id: str

    def _company(self, slug: str) -> Tenant:
        return make_tenant(self.client.app, slug, slug.title())

    @cached_property
    def partnership_a_c(self) -> tuple[str, Tenant]:
        """An active partnership of A with C, in which B has no part."""
        c = self._company("initech")
        return partner_up(self.client, self.a, c), c

    @cached_property
    def population_a_only(self) -> str:
        r = self.client.post(
            "/v1/populations", json={"slug": "a-only", "kind": "other"}, headers=self.a.headers()
        )
        assert r.status_code == 201, r.text
        return "a-only"

    @cached_property
    def pending(self) -> str:
        """A invited D, who has not answered."""
        return partner_up(self.client, self.a, self._company("umbrella"), accept=False)

    @cached_property
    def ended(self) -> tuple[str, Tenant]:
        """A partnership of A (inviter) with E that A ended."""
        e = self._company("hooli")
        pid = partner_up(self.client, self.a, e)
        r = self.client.post(f"/v1/partnerships/{pid}/end", headers=self.a.headers())
        assert r.status_code == 200, r.text
        return pid, e

    @cached_property
    def revoked_key(self) -> str:
        r = self.client.post(
            "/v1/api-keys", json={"name": "gone", "role": "admin"}, headers=self.a.headers()
        )
        assert r.status_code == 201, r.text
        gone = self.client.delete(f"/v1/api-keys/{r.json()['id']}", headers=self.a.headers())
        assert gone.status_code == 200, gone.text
        return str(r.json()["key"])

    @cached_property
    def cursor_a_c(self) -> str:
        """A cursor that the overlaps report of A's partnership with C really issued."""
        pid, c = self.partnership_a_c
        for t in (self.a, c):
            r = self.client.post(
                "/v1/populations",
                json={"slug": "customers", "kind": "customers"},
                headers=t.headers(),
            )
            assert r.status_code in (201, 409), r.text
        r = self.client.put(
            f"/v1/partnerships/{pid}/policy",
            json={"default": "overlap", "min_count": 1, "min_population": 1},
            headers=c.headers(),
        )
        assert r.status_code == 200, r.text
        for t in (self.a, c):
            _, done = upload(self.client, t, pid, "customers", [[i] for i in range(5)])
            assert done is not None and done.status_code == 200, done.text if done else ""
        wait_jobs(self.client.app)
        page = self.client.get(
            f"/v1/partnerships/{pid}/reports/overlaps?limit=2", headers=self.a.headers()
        )
        assert page.status_code == 200 and page.json()["next_cursor"], page.text
        return str(page.json()["next_cursor"])

    @cached_property
    def keys_cursor(self) -> str:
        """A cursor of another list: A's API keys."""
        page = self.client.get("/v1/api-keys?limit=1", headers=self.a.headers()).json()
        return str(page["next_cursor"])


@pytest.fixture
def world(client, tenants):  # type: ignore[no-untyped-def]
    pid = partner_up(client, tenants.a, tenants.b)
    for t in (tenants.a, tenants.b):
        client.post(
            "/v1/populations", json={"slug": "customers", "kind": "customers"}, headers=t.headers()
        )
    up, r = upload(client, tenants.a, pid, "customers", [[i] for i in range(20)])
    assert r is not None and r.status_code == 200, r.text if r is not None else ""
    return World(client, tenants.a, tenants.b, pid, str(up["id"]))


def _snapshot(w: World) -> dict[str, Any]:
    def get(path: str) -> Any:
        r = w.client.get(path, headers=w.a.headers())
        assert r.status_code == 200, (path, r.text)
        return r.json()

    status = get(f"/v1/partnerships/{w.pid}/status")
    summary = get(f"/v1/partnerships/{w.pid}/reports/summary")
    up = get(f"/v1/uploads/{w.upload_id}")
    return {
        "lists": [(s["population"], s["records"], s["committed_at"]) for s in status["mine"]],
        "upload": (up["status"], up["record_count"], up["committed_at"]),
        "summary": (summary["mine"], summary["cells"]),
        "populations": get("/v1/populations")["items"],
        "partnerships": [(p["id"], p["status"]) for p in get("/v1/partnerships")["items"]],
        "keys": [
            (k["id"], k["name"], k["role"], k["revoked_at"])
            for k in get("/v1/api-keys?include_revoked=true&limit=100")["items"]
        ],
    }


def _no_secret(text: str, *keys: str) -> None:
    assert "bmk_" not in text and "PRIVATE KEY" not in text.upper(), text
    for key in keys:
        assert key not in text


# --------------------------------------------------------------------------- API cases
Run = Callable[[World], httpx.Response]


@dataclass(frozen=True)
class Case:
    run: Run
    status: int
    names: str  # a regex the problem body must match: the field, line or limit
    needs: tuple[str, ...] = ()  # World properties to make before the snapshot


def _stage(w: World, chunks: list[bytes], records: int, **over: Any) -> str:
    r = w.client.post(
        f"/v1/partnerships/{w.pid}/uploads",
        json=manifest(w.client, w.a, w.pid, "customers", chunks, records, **over),
        headers=w.a.headers("uploader"),
    )
    assert r.status_code == 201, r.text
    return str(r.json()["id"])


def _put(w: World, uid: str, body: bytes, **headers: str) -> httpx.Response:
    h = {**w.a.headers("uploader"), "content-type": "application/x-ndjson", **headers}
    return w.client.put(f"/v1/uploads/{uid}/chunks/0", content=body, headers=h)


def _bad_chunk(line: bytes) -> Run:
    def run(w: World) -> httpx.Response:
        good = ndjson([record("r0", [1])])
        uid = _stage(w, [good + line], 2, confirm_shrink=True)
        return _put(w, uid, good + line)

    return run


def _token(value: str) -> bytes:
    rec = record("r1", [2])
    rec["tokens"][0]["value"] = value
    return ndjson([rec])


def _dup_refs(w: World) -> httpx.Response:
    body = ndjson([record("same", [1]), record("same", [2])])
    return _put(w, _stage(w, [body], 2, confirm_shrink=True), body)


def _content_type(w: World) -> httpx.Response:
    body = ndjson([record("r0", [1])])
    return _put(w, _stage(w, [body], 1, confirm_shrink=True), body, **{"content-type": "text/csv"})


def _gzip(w: World) -> httpx.Response:
    body = ndjson([record("r0", [1])])
    uid = _stage(w, [body], 1, confirm_shrink=True)
    return _put(w, uid, gzip.compress(body), **{"content-encoding": "gzip"})


def _empty_chunk(w: World) -> httpx.Response:
    """An empty body is a chunk of no records (200); the commit then finds none."""
    body = ndjson([record("r0", [1])])
    uid = _stage(w, [body], 1, confirm_shrink=True)
    got = _put(w, uid, b"")
    assert got.status_code == 200 and got.json()["records"] == 0, got.text
    return _commit(w, uid)


def _commit(w: World, uid: str, client: Any = None) -> httpx.Response:
    return (client or w.client).post(f"/v1/uploads/{uid}/commit", headers=w.a.headers("uploader"))


def _commit_after(mangle: str) -> Run:
    def run(w: World) -> httpx.Response:
        body = ndjson([record(f"r{i}", [i]) for i in range(20)])
        over: dict[str, Any] = {"record_count": 21} if mangle == "count" else {"digest": "0" * 64}
        uid = _stage(w, [body], 20, **over)
        assert _put(w, uid, body).status_code == 200
        return _commit(w, uid)

    return run


def _shrink(w: World) -> httpx.Response:
    _, r = upload(w.client, w.a, w.pid, "customers", [[1]])
    return r


def _empty_list(w: World) -> httpx.Response:
    return _commit(w, _stage(w, [], 0, digest=digest([])))


def _manifest(role: str = "uploader", **over: Any) -> Run:
    def run(w: World) -> httpx.Response:
        body = ndjson([record("r0", [1])])
        m = manifest(w.client, w.a, w.pid, "customers", [body], 1, **over)
        return w.client.post(f"/v1/partnerships/{w.pid}/uploads", json=m, headers=w.a.headers(role))

    return run


def _malformed_manifest(w: World) -> httpx.Response:
    h = {**w.a.headers("uploader"), "content-type": "application/json"}
    body = b'{"population": "customers", "record_count": 1,'
    return w.client.post(f"/v1/partnerships/{w.pid}/uploads", content=body, headers=h)


def _over_the_cap(w: World) -> httpx.Response:
    cap = w.client.app.state.settings.max_population_records
    return _manifest(record_count=cap + 1, chunk_count=cap // 1000 + 2)(w)


def _commits_per_day(w: World) -> httpx.Response:
    """A second commit in a day where the limit is one (the list's first commit counts)."""
    from fastapi.testclient import TestClient

    from service.main import create_app

    settings = w.client.app.state.settings.model_copy(update={"max_commits_per_day": 1})
    body = ndjson([record(f"r{i}", [i]) for i in range(20)])
    uid = _stage(w, [body], 20)
    assert _put(w, uid, body).status_code == 200
    with TestClient(create_app(settings), raise_server_exceptions=False) as strict:
        return _commit(w, uid, strict)


def _body_over_the_limit(chunked: bool) -> Run:
    def run(w: World) -> httpx.Response:
        limit = w.client.app.state.settings.max_body_bytes
        h = {**w.a.headers("uploader"), "content-type": "application/json"}
        url = f"/v1/partnerships/{w.pid}/uploads"
        if not chunked:
            return w.client.post(url, content=b" " * (limit + 1), headers=h)

        def pieces() -> Iterator[bytes]:  # no Content-Length: counted while streaming
            for _ in range(limit // 65536 + 1):
                yield b" " * 65536

        return w.client.post(url, content=pieces(), headers=h)

    return run


def _page(query: str = "", *, needs: str | None = None) -> Run:
    """A page of the overlaps report; `needs`: the World property holding the cursor."""

    def run(w: World) -> httpx.Response:
        q = f"cursor={getattr(w, needs)}" if needs else query
        return w.client.get(
            f"/v1/partnerships/{w.pid}/reports/overlaps?{q}", headers=w.a.headers("reader")
        )

    return run


def _end(
    headers: Callable[[World], dict[str, str]], pid: Callable[[World], str] = lambda w: w.pid
) -> Run:
    """Try to end a partnership (by default A's with B: that would delete A's list)."""

    def run(w: World) -> httpx.Response:
        return w.client.post(f"/v1/partnerships/{pid(w)}/end", headers=headers(w))

    return run


def _garbled(w: World) -> dict[str, str]:
    key = w.a.keys["admin"]
    return {"Authorization": f"Bearer {key[:-3]}{'aaa' if key[-3:] != 'aaa' else 'bbb'}"}


def _key_in_query(w: World) -> httpx.Response:
    key = w.a.keys["admin"]
    r = w.client.post(f"/v1/partnerships/{w.pid}/end?api_key={key}&key={key}")
    _no_secret(r.text + str(r.headers), key)
    return r


def _key_in_query_and_header(w: World) -> httpx.Response:
    key = w.a.keys["admin"]
    r = w.client.post(f"/v1/partnerships/{w.pid}/end?cursor={key}", headers=w.a.headers())
    _no_secret(r.text + str(r.headers), key)
    return r


def _b_request(method: str, path: Callable[[World], str], **kw: Any) -> Run:
    def run(w: World) -> httpx.Response:
        return w.client.request(method, path(w), headers=w.b.headers(), **kw)

    return run


def _population(method: str, slug: str, name: str) -> Run:
    def run(w: World) -> httpx.Response:
        body: dict[str, Any] = {"display_name": name}
        path = "/v1/populations"
        if method == "POST":
            body |= {"slug": slug, "kind": "other"}
        else:
            path += f"/{slug}"
        return w.client.request(method, path, json=body, headers=w.a.headers())

    return run


def _key_named(name: str) -> Run:
    def run(w: World) -> httpx.Response:
        return w.client.post(
            "/v1/api-keys", json={"name": name, "role": "reader"}, headers=w.a.headers()
        )

    return run


def _accept(who: Callable[[World], tuple[str, Tenant]]) -> Run:
    def run(w: World) -> httpx.Response:
        pid, t = who(w)
        return w.client.post(f"/v1/partnerships/{pid}/accept", headers=t.headers())

    return run


def _invite(slug: str) -> Run:
    def run(w: World) -> httpx.Response:
        return w.client.post("/v1/partnerships", json={"partner": slug}, headers=w.a.headers())

    return run


LONG_NAME = "x" * 201
CURSOR = r'"field":"cursor"'
CASES: dict[str, Case] = {
    # authentication and roles: each tries to end the partnership (deleting A's list)
    "no API key": Case(_end(lambda w: {}), 401, r"Authorization: Bearer"),
    "garbled API key": Case(_end(_garbled), 401, r"Authorization: Bearer"),
    "revoked API key": Case(
        _end(lambda w: {"Authorization": f"Bearer {w.revoked_key}"}),
        401,
        r"Authorization: Bearer",
        ("revoked_key",),
    ),
    "API key in the query string": Case(
        _key_in_query, 401, r"not accepted in the query string \(parameter 'api_key'\)"
    ),
    "API key in the query string beside a valid header": Case(
        _key_in_query_and_header, 401, r"query string.*Authorization: Bearer"
    ),
    "missing role: uploader ends a partnership": Case(
        _end(lambda w: w.a.headers("uploader")), 403, r"'admin'.*'uploader'"
    ),
    "missing role: reader stages an upload": Case(
        _manifest("reader"),
        403,
        r"'uploader'.*'reader'",
    ),
    # foreign ids: company B's admin key on company A's objects
    "foreign upload id": Case(
        _b_request("DELETE", lambda w: f"/v1/uploads/{w.upload_id}"), 404, r"[Uu]pload"
    ),
    "foreign partnership id": Case(
        _b_request("POST", lambda w: f"/v1/partnerships/{w.partnership_a_c[0]}/end"),
        404,
        r"[Pp]artnership",
        ("partnership_a_c",),
    ),
    "foreign population slug": Case(
        _b_request("PATCH", lambda w: "/v1/populations/a-only", json={"display_name": "mine"}),
        404,
        r"a-only",
        ("population_a_only",),
    ),
    # request bodies
    "body over the size limit": Case(_body_over_the_limit(False), 413, r"limit of \d+ bytes"),
    "chunked body over the size limit": Case(
        _body_over_the_limit(True), 413, r"limit of \d+ bytes"
    ),
    "compressed body": Case(_gzip, 415, r"[Ee]ncoding|compress"),
    "wrong content type": Case(_content_type, 415, r"x-ndjson|content.type"),
    "malformed NDJSON": Case(_bad_chunk(b'{"ref": "r9", "tokens": [\n'), 422, r"line 2"),
    "malformed JSON manifest": Case(
        _malformed_manifest, 422, r'"field":"body".*invalid JSON at character 46'
    ),
    "privileged field in the manifest": Case(
        _manifest(company_id="someone-else"), 422, r"company_id"
    ),
    # tokens and records
    "token of the wrong length": Case(_bad_chunk(_token(b64(b"x" * 15))), 422, r"16 bytes"),
    "token not base64url": Case(_bad_chunk(_token("*" * 22)), 422, r"base64"),
    "plaintext domain as a token": Case(
        _bad_chunk(_token("acme.com")), 422, r"tokens\[0\]\.value: looks like plaintext"
    ),
    "duplicate refs in a chunk": Case(_dup_refs, 422, r'line 2: ref: .*"field":"ref"'),
    # uploads
    "empty chunk body, then commit": Case(_empty_chunk, 422, r'"field":"record_count"'),
    "empty list replacing a committed one": Case(_empty_list, 409, r"confirm_shrink"),
    "shrinking a list without confirm_shrink": Case(_shrink, 409, r"confirm_shrink"),
    "record count mismatch": Case(_commit_after("count"), 422, r'"field":"record_count"'),
    "digest mismatch": Case(_commit_after("digest"), 422, r"digest"),
    "quota: over the population size cap": Case(_over_the_cap, 413, r"size cap of \d+"),
    "quota: commits per day": Case(_commits_per_day, 429, r"limit is 1"),
    # names
    "over-long population name": Case(
        _population("PATCH", "customers", LONG_NAME), 422, r'"field":"display_name".*at most 200'
    ),
    "control character in a population name": Case(
        _population("POST", "newpop", "Acme\x07Corp"), 422, r'"field":"display_name"'
    ),
    "NUL in a population name": Case(
        _population("PATCH", "customers", "Acme\x00"), 422, r'"field":"display_name"'
    ),
    "over-long API key name": Case(_key_named(LONG_NAME), 422, r'"field":"name".*at most 200'),
    "newline in an API key name": Case(_key_named("nightly\nsync"), 422, r'"field":"name"'),
    # pagination
    "page limit 0": Case(_page("limit=0"), 422, r'"field":"limit"'),
    "page limit -1": Case(_page("limit=-1"), 422, r'"field":"limit"'),
    "page limit 10^9": Case(_page("limit=1000000000"), 422, r'"field":"limit".*1000'),
    "forged cursor": Case(_page("cursor=bm90LWEtY3Vyc29y"), 422, CURSOR),
    "cursor of another partnership": Case(_page(needs="cursor_a_c"), 422, CURSOR, ("cursor_a_c",)),
    "cursor of another list": Case(_page(needs="keys_cursor"), 422, CURSOR, ("keys_cursor",)),
    # partnership transitions
    "accept an active partnership": Case(_accept(lambda w: (w.pid, w.b)), 409, r"already active"),
    "accept one's own invitation": Case(
        _accept(lambda w: (w.pending, w.a)), 409, r"invited company", ("pending",)
    ),
    "accept an ended partnership": Case(
        _accept(lambda w: w.ended), 409, r"already ended", ("ended",)
    ),
    "end an ended partnership": Case(
        _end(lambda w: w.a.headers(), lambda w: w.ended[0]), 409, r"already ended", ("ended",)
    ),
    "invite a current partner again": Case(_invite("globex"), 409, r"already have"),
    "invite oneself": Case(_invite("acme"), 422, r'"field":"partner"'),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_request_is_refused_and_loses_nothing(case, world):  # type: ignore[no-untyped-def]
    c = CASES[case]
    for need in c.needs:
        getattr(world, need)
    before = _snapshot(world)
    assert before["lists"][0][:2] == ("customers", 20) and before["upload"][0] == "committed"
    r = c.run(world)
    assert r.status_code == c.status, r.text
    assert r.headers["content-type"].startswith("application/problem+json"), r.text
    assert re.search(c.names, r.text), r.text
    _no_secret(r.text + str(r.headers), *world.a.keys.values(), *world.b.keys.values())
    assert _snapshot(world) == before


# --------------------------------------------------------------------------- CLI cases
ROWS = [(f"00{i}", f"Company {i}", f"company-{i}.com") for i in range(30)]


def _csv(rows: list[tuple[str, ...]], *, sep: str = ",", eol: str = "\n") -> str:
    return "".join(sep.join(r) + eol for r in [("Account ID", "Account Name", "Website"), *rows])


def _file(data: bytes) -> Callable[[Path], list[str]]:
    def make(tmp_path: Path) -> list[str]:
        p = tmp_path / "in.csv"
        p.write_bytes(data)
        return ["sync", str(p), "--partner", "globex", "--population", "customers"]

    return make


def _open_key_file(tmp_path: Path) -> list[str]:
    (tmp_path / "acme" / "key.pem").chmod(0o644)
    return _file(_csv(ROWS).encode())(tmp_path)


def _http_url(tmp_path: Path) -> list[str]:
    return ["--url", "http://escrow.example.com", *_file(_csv(ROWS).encode())(tmp_path)]


@dataclass(frozen=True)
class CliCase:
    args: Callable[[Path], list[str]]
    exit_code: int
    says: str  # a regex the output must match (newlines removed): file:line, field...


CLI_CASES: dict[str, CliCase] = {
    "CSV not UTF-8": CliCase(
        _file(_csv(ROWS[:2]).encode() + b"9,Caf\xe9 Latin-1,cafe.fr\n"),
        cli.EXIT_USAGE,
        r"in\.csv:4: .*not UTF-8",
    ),
    "CSV in UTF-16": CliCase(
        _file(_csv(ROWS).encode("utf-16")), cli.EXIT_USAGE, r"in\.csv:1: .*UTF-16"
    ),
    "CSV with a wrong delimiter": CliCase(
        _file(_csv(ROWS, sep="|").encode()), cli.EXIT_USAGE, r"in\.csv:1: no website column"
    ),
    "CSV row with a stray delimiter": CliCase(
        _file(_csv([*ROWS[:5], ("9", "Semi; colon", "x.com", "extra")]).encode()),
        cli.EXIT_USAGE,
        r"in\.csv:7: expected 3 cells",
    ),
    "CSV with a BOM works": CliCase(_file(b"\xef\xbb\xbf" + _csv(ROWS).encode()), 0, r"committed"),
    "CSV with CRLF line ends works": CliCase(
        _file(_csv(ROWS, eol="\r\n").encode()), 0, r"committed"
    ),
    "semicolon CSV with BOM and CRLF works": CliCase(
        _file(b"\xef\xbb\xbf" + _csv(ROWS, sep=";", eol="\r\n").encode()), 0, r"committed"
    ),
    "key file mode 0644": CliCase(_open_key_file, cli.EXIT_USAGE, r"key\.pem.*0644.*chmod 600"),
    "http:// to a non-loopback host": CliCase(_http_url, cli.EXIT_ERROR, r"https://"),
}


@pytest.mark.parametrize("case", sorted(CLI_CASES))
def test_bad_cli_input_is_refused_and_loses_nothing(  # type: ignore[no-untyped-def]
    case, as_company, tenants, sdk, tmp_path, monkeypatch, request
):
    pid = request.getfixturevalue("partnered")
    a = tenants.a
    first = as_company(a, *_file(_csv(ROWS).encode())(tmp_path))
    assert first.exit_code == 0, first.output

    def committed() -> list[tuple[str, int, Any]]:
        st = sdk(a).sync_status(pid)
        return [(m.population, m.records, m.committed_at) for m in st.mine]

    before = committed()
    assert [c[:2] for c in before] == [("customers", len(ROWS))]
    c = CLI_CASES[case]
    args = c.args(tmp_path)
    if "--url" in args:  # the real client, which must refuse before connecting
        monkeypatch.setattr(cli.State, "client", _REAL_CLI_CLIENT)
    r = as_company(a, *args)
    out = r.output.replace("\n", "")
    assert r.exit_code == c.exit_code, r.output
    assert re.search(c.says, out), r.output
    _no_secret(r.output, *a.keys.values())
    after = committed()
    if c.exit_code:
        assert after == before
    else:  # the same accounts, read through the BOM, CRLF or semicolons: same list
        assert [x[:2] for x in after] == [x[:2] for x in before]


# --------------------------------------------------------------------------- company names
@pytest.mark.parametrize(
    "name",
    ["x" * 201, "Acme\x07Corp", "Acme\nCorp", "   "],
    ids=["long", "bell", "newline", "blank"],
)
def test_bad_company_name_is_refused(name, database_url, session, monkeypatch):  # type: ignore[no-untyped-def]
    from service.manage import main
    from service.models import Company

    monkeypatch.setenv("BLINDMAP_DATABASE_URL", database_url)
    monkeypatch.setenv("BLINDMAP_SECRET_KEY", TEST_SECRET)
    monkeypatch.setenv("BLINDMAP_ENV", "test")
    count = session.execute(select(func.count()).select_from(Company)).scalar_one()
    r = CliRunner().invoke(main, ["create-company", "newco", "--name", name])
    assert r.exit_code == 2 and "--name" in r.output, r.output
    _no_secret(r.output)
    session.rollback()
    assert session.execute(select(func.count()).select_from(Company)).scalar_one() == count


# --------------------------------------------------------------------------- SDK base URL
@pytest.mark.parametrize(
    ("url", "refused"),
    [
        ("http://escrow.example.com", True),
        ("http://10.0.0.7:8000", True),
        ("http://[2001:db8::1]:8000", True),
        ("https://escrow.example.com", False),
        ("http://127.0.0.1:8000", False),
        ("http://127.8.9.10", False),
        ("http://localhost:8000", False),
        ("http://[::1]:8000", False),
    ],
)
def test_sdk_sends_the_key_over_plain_http_to_this_machine_only(url, refused):  # type: ignore[no-untyped-def]
    import blindmap

    key = "bmk_" + "k" * 38
    if not refused:
        with blindmap.Client(key, base_url=url) as c:
            assert c.base_url == url
        return
    with pytest.raises(blindmap.BlindmapError, match=r"use https://") as exc:
        blindmap.Client(key, base_url=url)
    _no_secret(str(exc.value), key)
