"""Binary overlaps pages (docs/protocol.md §9.1, `blindmap.binary_pages`): asked for with
`Accept`, they must carry exactly what the JSON pages carry (payloads as bytes instead of
base64url) on both databases, page for page; JSON stays the default; the SDK's decoder
refuses anything malformed with an error naming where, never another exception."""

from __future__ import annotations

import os
import uuid

import httpx
import pytest

import blindmap
from blindmap import APIError, binary_pages
from blindmap.protocol import OverlapPage
from tests.test_reports import _policy, mapped  # noqa: F401  (fixture)
from tests.uploads import upload, wait_jobs

BIN = {"Accept": binary_pages.BINARY_OVERLAPS}


def _walk(client, who, pid, *, binary: bool, limit: int, **filters):  # type: ignore[no-untyped-def]
    """Every page through the API: (items as JSON, next cursor, policy versions) each."""
    out, cursor = [], None
    while True:
        params = {"limit": limit, **filters, **({"cursor": cursor} if cursor else {})}
        r = client.get(
            f"/v1/partnerships/{pid}/reports/overlaps",
            params=params,
            headers={**who.headers(), **(BIN if binary else {})},
        )
        assert r.status_code == 200, r.text
        assert r.headers["vary"] == "Accept"
        if binary:
            assert r.headers["content-type"] == binary_pages.BINARY_OVERLAPS
            page = binary_pages.decode_overlap_page(r.content)
            items = binary_pages.as_json_items(page)
        else:
            assert r.headers["content-type"].startswith("application/json")
            page = OverlapPage.model_validate_json(r.content)  # type: ignore[assignment]
            items = [i.model_dump(mode="json") for i in page.items]  # type: ignore[attr-defined]
        assert str(page.partnership_id) == str(pid)
        out.append((items, page.next_cursor, page.policy_versions.model_dump()))
        cursor = page.next_cursor
        if not cursor:
            return out


def test_binary_pages_equal_json_pages(client, tenants, app, mapped):  # noqa: F811
    a, b = tenants.a, tenants.b
    # B: a list without sealed fields (`fields: []`, no payload) beside the sealed one
    client.post("/v1/populations", json={"slug": "events", "kind": "other"}, headers=b.headers())
    upload(client, b, mapped, "events", [[i] for i in range(10, 50, 2)])
    policy = {
        "default": "hidden",
        "min_count": 3,
        "min_population": 5,
        "populations": {
            "customers": {"share": "full", "fields": ["name", "domain"]},
            "events": {"share": "overlap"},
        },
    }
    _policy(client, b, mapped, policy)
    wait_jobs(app)
    cases = [
        (a, {}, 7),
        (a, {}, 1000),
        (a, {"mine": "customers", "theirs": "events"}, 3),
        (b, {}, 5),
    ]
    for who, filters, limit in cases:
        binary = _walk(client, who, mapped, binary=True, limit=limit, **filters)
        json_ = _walk(client, who, mapped, binary=False, limit=limit, **filters)
        assert binary == json_
        items = [i for p in binary for i in p[0]]
        assert items and all(i["partner"] for i in items)
    released = [r for p in binary for i in p[0] for r in i["partner"]]
    assert any(r["sealed"] for r in released)

    # B's policy drops `domain`: B's customers payloads are withheld (sealed with it)
    policy["populations"]["customers"]["fields"] = ["name"]  # type: ignore[index]
    _policy(client, b, mapped, policy)
    binary = _walk(client, a, mapped, binary=True, limit=9)
    assert binary == _walk(client, a, mapped, binary=False, limit=9)
    recs = [r for p in binary for i in p[0] for r in i["partner"]]
    withheld = [r for r in recs if r["population"] == "customers"]
    assert withheld and all(r["sealed"] is None and "domain" in r["withheld"] for r in withheld)
    unsealed = [r for r in recs if r["population"] == "events"]
    assert unsealed and all(
        (r["sealed"], r["fields"], r["withheld"]) == (None, [], None) for r in unsealed
    )


def test_binary_page_errors_stay_problem_json(client, tenants, mapped):  # noqa: F811
    r = client.get(
        f"/v1/partnerships/{mapped}/reports/overlaps",
        params={"limit": 10_001},
        headers={**tenants.a.headers(), **BIN},
    )
    assert r.status_code == 422 and r.headers["content-type"] == "application/problem+json"
    assert "limit" in r.text


# ----------------------------------------------------------------------- the decoder


def _sample() -> bytes:
    w = binary_pages.OverlapPageWriter()
    mine = w.population("customers")
    rel = w.release("customers", ("name",), None)
    gone = w.release("events", (), "the partner's policy no longer releases ['domain']")
    w.item("r" * 32, mine, os.urandom(40), [(rel, "t" * 32, os.urandom(33))])
    w.item("s" * 32, mine, os.urandom(41), [(rel, "u" * 32, os.urandom(30)), (gone, "v", None)])
    w.item("é" * 3, mine, os.urandom(28), [])
    return w.body(uuid.uuid4(), "next", {"mine": 2, "partner": 3})


def test_decoder_round_trip() -> None:
    body = _sample()
    page = binary_pages.decode_overlap_page(body)
    assert page.next_cursor == "next" and page.policy_versions.partner == 3
    assert [i.ref for i in page.items] == ["r" * 32, "s" * 32, "é" * 3]
    second = page.items[1].partner
    assert [(r.population, r.ref, r.fields) for r in second] == [
        ("customers", "u" * 32, ["name"]),
        ("events", "v", []),
    ]
    assert second[1].sealed is None and "domain" in (second[1].withheld or "")
    assert len(second[0].sealed or b"") == 30


def test_decoder_refuses_every_truncation_and_any_trailing_byte() -> None:
    body = _sample()
    for n in range(len(body)):
        with pytest.raises(binary_pages.BinaryPageError):
            binary_pages.decode_overlap_page(body[:n])
    with pytest.raises(binary_pages.BinaryPageError, match="after the last item"):
        binary_pages.decode_overlap_page(body + b"\x00")


@pytest.mark.parametrize(
    ("mutate", "match"),
    [
        (lambda b: b"XXXX" + b[4:], "not a binary overlaps page"),
        (lambda b: b[:4] + b"\xff\xff\xff\xff" + b[8:], "runs past the end"),
        (lambda b: b[:8] + b"[" + b[9:], "bad header"),
    ],
)
def test_decoder_names_what_is_wrong(mutate, match) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(binary_pages.BinaryPageError, match=match):
        binary_pages.decode_overlap_page(mutate(_sample()))


def test_decoder_refuses_an_index_outside_the_header() -> None:
    w = binary_pages.OverlapPageWriter()
    w.item("r", 5, b"x" * 28, [])  # population 5 of none
    with pytest.raises(binary_pages.BinaryPageError, match="item 1 at byte"):
        binary_pages.decode_overlap_page(w.body(uuid.uuid4(), None, {"mine": 1, "partner": 1}))
    w = binary_pages.OverlapPageWriter()
    w.item("r", w.population("c"), b"x" * 28, [(3, "t", None)])  # release 3 of none
    with pytest.raises(binary_pages.BinaryPageError, match="item 1 at byte"):
        binary_pages.decode_overlap_page(w.body(uuid.uuid4(), None, {"mine": 1, "partner": 1}))


# ------------------------------------------------------------------- the SDK's request


def _sdk(handler) -> blindmap.Client:  # type: ignore[no-untyped-def]
    http = httpx.Client(transport=httpx.MockTransport(handler))
    return blindmap.Client(base_url="http://escrow", api_key="bmk_x", http_client=http)


def test_sdk_asks_for_binary_and_reads_it() -> None:
    body, seen = _sample(), []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request.headers["accept"])
        return httpx.Response(
            200, content=body, headers={"content-type": binary_pages.BINARY_OVERLAPS}
        )

    page = _sdk(handler).report_overlaps_raw(uuid.uuid4())
    assert binary_pages.BINARY_OVERLAPS in seen[0] and len(page.items) == 3


def test_sdk_reads_a_json_answer_and_refuses_a_malformed_binary_one() -> None:
    pid = uuid.uuid4()
    json_page = {
        "partnership_id": str(pid),
        "items": [
            {
                "ref": "r",
                "population": "customers",
                "self_sealed": "AAEC",
                "partner": [
                    {"population": "c", "ref": "t", "sealed": None, "fields": [], "withheld": None}
                ],
            }
        ],
        "next_cursor": None,
        "policy_versions": {"mine": 1, "partner": 1},
    }
    page = _sdk(lambda r: httpx.Response(200, json=json_page)).report_overlaps_raw(pid)
    assert page.items[0].self_sealed == b"\x00\x01\x02"
    assert binary_pages.as_json_items(page) == json_page["items"]

    def broken(request: httpx.Request) -> httpx.Response:
        return httpx.Response(
            200, content=_sample()[:-3], headers={"content-type": binary_pages.BINARY_OVERLAPS}
        )

    with pytest.raises(APIError, match="malformed binary overlaps page"):
        _sdk(broken).report_overlaps_raw(pid)


# ------------------------------------------------------------- page cursors, in flight


def test_cursors_are_where_the_walk_turns_pages(client, tenants, app, mapped):  # noqa: F811
    """`…/reports/overlaps/cursors` gives exactly the cursors a page-by-page walk
    meets, for page sizes that do and do not divide the report, across lists."""
    a, b = tenants.a, tenants.b
    client.post("/v1/populations", json={"slug": "events", "kind": "other"}, headers=b.headers())
    upload(client, b, mapped, "events", [[i] for i in range(10, 50, 2)])
    wait_jobs(app)
    cases = [(a, {}), (b, {}), (a, {"mine": "customers"})]
    for who, filters in cases:
        walk_all = _walk(client, who, mapped, binary=True, limit=10_000, **filters)
        total = sum(len(p[0]) for p in walk_all)
        assert total > 6
        for limit in (1, 2, 3, 5, total, total - 1, total + 1):
            walk = _walk(client, who, mapped, binary=True, limit=limit, **filters)
            r = client.get(
                f"/v1/partnerships/{mapped}/reports/overlaps/cursors",
                params={"limit": limit, **filters},
                headers=who.headers("reader"),
            )
            assert r.status_code == 200, r.text
            plan = r.json()
            assert plan["items"] == total and plan["limit"] == limit
            # the walk's cursors, without the one after a last full page (it starts nothing)
            starts = [None] + [p[1] for p in walk[:-1]]
            if not walk[-1][0]:
                starts.pop()
            assert plan["cursors"] == starts, (limit, filters)
            assert plan["policy_versions"] == walk[0][2]


def test_cursors_refuse_what_the_pages_refuse(client, tenants, mapped):  # noqa: F811
    base = f"/v1/partnerships/{mapped}/reports/overlaps/cursors"
    h = tenants.a.headers()
    assert client.get(base, params={"limit": 0}, headers=h).status_code == 422
    assert client.get(base, params={"mine": "nope"}, headers=h).status_code == 404
    assert client.get(base, params={"theirs": "nope"}, headers=h).status_code == 404


class _Escrow:
    """Serves a report of `n` pages of one item each; page k's cursor is "c{k}"."""

    def __init__(self, n: int, lie_at: int | None = None, planned: int | None = None) -> None:
        self.n, self.lie_at = n, lie_at
        self.planned = n if planned is None else planned  # pages the cursor plan knows of
        self.asked: list[str | None] = []
        self.pid = uuid.uuid4()

    def __call__(self, request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/cursors"):
            cursors = [None] + [f"c{k}" for k in range(1, self.planned)]
            return httpx.Response(
                200,
                json={
                    "partnership_id": str(self.pid),
                    "items": self.n,
                    "limit": 1,
                    "cursors": cursors,
                    "policy_versions": {"mine": 1, "partner": 1},
                },
            )
        cursor = request.url.params.get("cursor")
        self.asked.append(cursor)
        k = int(cursor[1:]) if cursor else 0
        w = binary_pages.OverlapPageWriter()
        w.item(f"r{k}", w.population("customers"), b"x" * 28, [])
        nxt = f"c{k + 1}" if k + 1 < self.n else None
        if k == self.lie_at:
            nxt = "elsewhere"
        body = w.body(self.pid, nxt, {"mine": 1, "partner": 1})
        return httpx.Response(
            200, content=body, headers={"content-type": binary_pages.BINARY_OVERLAPS}
        )


def test_pages_in_flight_come_in_order() -> None:
    escrow = _Escrow(9)
    pages = list(_sdk(escrow).iter_raw_overlap_pages(escrow.pid, in_flight=3))
    assert [p.items[0].ref for p in pages] == [f"r{k}" for k in range(9)]
    assert sorted(escrow.asked, key=str) == sorted([None] + [f"c{k}" for k in range(1, 9)], key=str)


def test_the_first_page_is_asked_for_while_the_plan_is_made() -> None:
    """The plan (the escrow's page-ends query) and the first page, which starts at the
    beginning whatever the plan says, are requested at once: this escrow answers the plan
    only once the first page has been asked for."""
    import threading

    escrow = _Escrow(3)
    first_asked = threading.Event()

    def slow_plan(request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/cursors"):
            assert first_asked.wait(10), "the first page waited for the plan"
        elif request.url.params.get("cursor") is None:
            first_asked.set()
        return escrow(request)

    pages = list(_sdk(slow_plan).iter_raw_overlap_pages(escrow.pid, in_flight=2))
    assert [p.items[0].ref for p in pages] == ["r0", "r1", "r2"]
    assert escrow.asked.count(None) == 1


def test_pages_in_flight_notice_a_report_that_changed() -> None:
    escrow = _Escrow(5, lie_at=2)
    got = []
    with pytest.raises(blindmap.BlindmapError, match="changed while it was fetched"):
        for page in _sdk(escrow).iter_raw_overlap_pages(escrow.pid, in_flight=2):
            got.append(page.items[0].ref)
    assert got == ["r0", "r1"]


@pytest.mark.parametrize("planned", [1, 3])
def test_pages_in_flight_notice_a_report_that_grew_after_the_plan(planned: int) -> None:
    """The plan was made before a match job committed: its last page is not the report's
    last, and the report must not end there as if it were complete."""
    escrow = _Escrow(5, planned=planned)
    got = []
    with pytest.raises(blindmap.BlindmapError, match="changed while it was fetched"):
        for page in _sdk(escrow).iter_raw_overlap_pages(escrow.pid, in_flight=2):
            got.append(page.items[0].ref)
    assert got == [f"r{k}" for k in range(planned - 1)]


def test_pages_in_flight_stop_early() -> None:
    escrow = _Escrow(50)
    it = _sdk(escrow).iter_raw_overlap_pages(escrow.pid, in_flight=2)
    assert next(it).items[0].ref == "r0"
    it.close()  # type: ignore[attr-defined]
    assert len(escrow.asked) <= 3  # the page handed out and at most two in flight


def test_an_empty_report_has_one_empty_page(client, tenants):  # type: ignore[no-untyped-def]
    from tests.conftest import partner_up

    pid = partner_up(client, tenants.a, tenants.b)  # no lists yet
    r = client.get(f"/v1/partnerships/{pid}/reports/overlaps/cursors", headers=tenants.a.headers())
    assert r.status_code == 200 and r.json()["cursors"] == [None] and r.json()["items"] == 0
    assert _walk(client, tenants.a, pid, binary=True, limit=10) == [
        ([], None, r.json()["policy_versions"])
    ]


def test_pages_in_flight_fall_back_to_one_at_a_time_without_the_cursors_route() -> None:
    escrow = _Escrow(4)

    def old_escrow(request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/cursors"):
            return httpx.Response(
                404,
                json={"type": "about:blank", "title": "Not Found", "status": 404},
                headers={"content-type": "application/problem+json"},
            )
        return escrow(request)

    pages = list(_sdk(old_escrow).iter_raw_overlap_pages(escrow.pid, in_flight=2))
    assert [p.items[0].ref for p in pages] == ["r0", "r1", "r2", "r3"]


def test_cursors_are_in_the_disclosure_log(client, tenants, mapped):  # noqa: F811
    """Like the summary, a look at the report's shape is logged (0 records released)."""
    a = tenants.a
    before = client.get(f"/v1/partnerships/{mapped}/disclosures", headers=a.headers()).json()
    r = client.get(
        f"/v1/partnerships/{mapped}/reports/overlaps/cursors",
        params={"mine": "customers"},
        headers=a.headers(),
    )
    assert r.status_code == 200
    after = client.get(f"/v1/partnerships/{mapped}/disclosures", headers=a.headers()).json()
    new = [e for e in after["items"] if e not in before["items"]]
    assert [(e["report"], e["records"], e["viewer_population"]) for e in new] == [
        ("overlaps", 0, "customers")
    ]
