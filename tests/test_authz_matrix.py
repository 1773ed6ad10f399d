"""Authorization matrix: every route x method x actor -> the exact expected status.

Actors (columns of MATRIX, in this order):
  anon      no Authorization header
  revoked   a revoked key of company A
  a_admin, a_uploader, a_reader   company A's keys (A owns the objects in the URL)
  b_admin, b_uploader, b_reader   company B's keys; B is A's partner in the partnership
                                  of the URL (`pid`), but owns no other object in it
  c_admin   company C, a partner of nobody here

The objects in each URL belong to A: partnership `pid` (A-B, active; pending for
/accept), A's population `a-only`, A's uploads in `pid`, A's spare API key. Each row is
run on a fresh world (one test per route, on SQLite and PostgreSQL), actors in column
order, and mutating routes get a fresh object per actor, so each cell is independent.

The test fails on any status that differs from the table — an unexpected allow (2xx where
the table says 4xx) as much as an unexpected refusal — and on any route of the OpenAPI
document that has no row. Policies decide what reports contain, not who may call them:
`test_partner_reports_follow_the_policy_level` checks B's reports on A's data at each
level (hidden, count, overlap, full).
"""

from __future__ import annotations

import uuid

import pytest

from tests.conftest import make_tenant, partner_up, register_key
from tests.uploads import b64, manifest, ndjson, record, token, upload, wait_jobs

ACTORS = (
    "anon", "revoked", "a_admin", "a_uploader", "a_reader",
    "b_admin", "b_uploader", "b_reader", "c_admin",
)  # fmt: skip


def row(*statuses: int) -> dict[str, int]:
    assert len(statuses) == len(ACTORS)
    return dict(zip(ACTORS, statuses, strict=True))


# fmt: off
MATRIX: dict[tuple[str, str], dict[str, int]] = {
    #                                             an   rev  A:ad up   rd   B:ad up   rd   C
    ("GET", "/healthz"):                          row(200, 200, 200, 200, 200, 200, 200, 200, 200),
    ("GET", "/readyz"):                           row(200, 200, 200, 200, 200, 200, 200, 200, 200),
    ("GET", "/v1/me"):                            row(401, 401, 200, 200, 200, 200, 200, 200, 200),
    ("PUT", "/v1/me/public-key"):                 row(401, 401, 200, 403, 403, 200, 403, 403, 200),
    ("POST", "/v1/api-keys"):                     row(401, 401, 201, 403, 403, 201, 403, 403, 201),
    ("GET", "/v1/api-keys"):                      row(401, 401, 200, 403, 403, 200, 403, 403, 200),
    ("DELETE", "/v1/api-keys/{key_id}"):          row(401, 401, 200, 403, 403, 404, 403, 403, 404),
    ("GET", "/v1/populations"):                   row(401, 401, 200, 200, 200, 200, 200, 200, 200),
    ("POST", "/v1/populations"):                  row(401, 401, 201, 403, 403, 201, 403, 403, 201),
    ("GET", "/v1/populations/{slug}"):            row(401, 401, 200, 200, 200, 404, 404, 404, 404),
    ("PATCH", "/v1/populations/{slug}"):          row(401, 401, 200, 403, 403, 404, 403, 403, 404),
    ("DELETE", "/v1/populations/{slug}"):         row(401, 401, 204, 403, 403, 404, 403, 403, 404),
    ("POST", "/v1/partnerships"):                 row(401, 401, 201, 403, 403, 201, 403, 403, 201),
    ("GET", "/v1/partnerships"):                  row(401, 401, 200, 200, 200, 200, 200, 200, 200),
    ("GET", "/v1/partnerships/{partnership_id}"): row(401, 401, 200, 200, 200, 200, 200, 200, 404),
    # A invited B: only the invitee accepts (409 for the inviter says nothing new to A)
    ("POST", "/v1/partnerships/{partnership_id}/accept"):
                                                  row(401, 401, 409, 403, 403, 200, 403, 403, 404),
    ("POST", "/v1/partnerships/{partnership_id}/end"):
                                                  row(401, 401, 200, 403, 403, 200, 403, 403, 404),
    ("GET", "/v1/partnerships/{partnership_id}/policy"):
                                                  row(401, 401, 200, 200, 200, 200, 200, 200, 404),
    ("PUT", "/v1/partnerships/{partnership_id}/policy"):
                                                  row(401, 401, 200, 403, 403, 200, 403, 403, 404),
    ("GET", "/v1/partnerships/{partnership_id}/partner-policy"):
                                                  row(401, 401, 200, 200, 200, 200, 200, 200, 404),
    ("POST", "/v1/partnerships/{partnership_id}/uploads"):
                                                  row(401, 401, 201, 201, 403, 201, 201, 403, 404),
    ("GET", "/v1/uploads/{upload_id}"):           row(401, 401, 200, 200, 403, 404, 404, 403, 404),
    ("DELETE", "/v1/uploads/{upload_id}"):        row(401, 401, 204, 204, 403, 404, 404, 403, 404),
    ("PUT", "/v1/uploads/{upload_id}/chunks/{n}"):
                                                  row(401, 401, 200, 200, 403, 404, 404, 403, 404),
    ("POST", "/v1/uploads/{upload_id}/commit"):   row(401, 401, 200, 200, 403, 404, 404, 403, 404),
    ("GET", "/v1/partnerships/{partnership_id}/status"):
                                                  row(401, 401, 200, 200, 200, 200, 200, 200, 404),
    ("GET", "/v1/partnerships/{partnership_id}/reports/summary"):
                                                  row(401, 401, 200, 200, 200, 200, 200, 200, 404),
    ("GET", "/v1/partnerships/{partnership_id}/reports/overlaps"):
                                                  row(401, 401, 200, 200, 200, 200, 200, 200, 404),
    ("GET", "/v1/partnerships/{partnership_id}/reports/overlaps/cursors"):
                                                  row(401, 401, 200, 200, 200, 200, 200, 200, 404),
    ("GET", "/v1/partnerships/{partnership_id}/reports/white-space"):
                                                  row(401, 401, 200, 200, 200, 200, 200, 200, 404),
    ("POST", "/v1/partnerships/{partnership_id}/lookup"):
                                                  row(401, 401, 200, 200, 200, 200, 200, 200, 404),
    ("GET", "/v1/partnerships/{partnership_id}/disclosures"):
                                                  row(401, 401, 200, 200, 200, 200, 200, 200, 404),
    ("GET", "/v1/audit"):                         row(401, 401, 200, 200, 200, 200, 200, 200, 200),
}
# fmt: on

SHARED = {"populations": {"customers": {"share": "full", "fields": ["name", "domain"]}}}


# -- the world ----------------------------------------------------------------------------
class World:
    def __init__(self, app, client, tenants, *, pending: bool = False):
        self.app, self.client = app, client
        self.a, self.b = tenants.a, tenants.b
        self.c = make_tenant(app, "initech", "Initech")
        make_tenant(app, "umbrella", "Umbrella")  # the company everyone may invite
        for t in (self.a, self.b, self.c):
            register_key(client, t)
        # a revoked key of A
        r = client.post(
            "/v1/api-keys", json={"name": "gone", "role": "admin"}, headers=self.a.headers()
        )
        self.revoked_key = r.json()["key"]
        assert client.delete(f"/v1/api-keys/{r.json()['id']}", headers=self.a.headers()).is_success
        for t, slugs in ((self.a, ("customers", "a-only")), (self.b, ("customers",))):
            for slug in slugs:
                r = client.post(
                    "/v1/populations",
                    json={"slug": slug, "kind": "customers"},
                    headers=t.headers(),
                )
                assert r.status_code == 201, r.text
        self.pid = partner_up(client, self.a, self.b, accept=not pending)
        if pending:
            return
        for t in (self.a, self.b):
            self.policy(t, {"default": "hidden", "min_count": 1, "min_population": 0, **SHARED})
        upload(
            client, self.a, self.pid, "customers", [[i] for i in range(10)], sealed_fields=["name"]
        )
        upload(
            client,
            self.b,
            self.pid,
            "customers",
            [[i] for i in range(5, 15)],
            sealed_fields=["name"],
        )
        wait_jobs(app)

    def policy(self, tenant, doc):
        r = self.client.put(
            f"/v1/partnerships/{self.pid}/policy", json=doc, headers=tenant.headers()
        )
        assert r.status_code == 200, r.text

    def headers(self, actor: str) -> dict[str, str]:
        if actor == "anon":
            return {}
        if actor == "revoked":
            return {"Authorization": f"Bearer {self.revoked_key}"}
        company, role = actor.split("_")
        return {"a": self.a, "b": self.b, "c": self.c}[company].headers(role)

    # fresh objects of A, one per call
    def staged_upload(self, population: str = "a-only", records: int = 2) -> tuple[str, bytes]:
        """A staged upload of A with its one chunk not sent yet, and that chunk."""
        body = ndjson([record(f"r{i}", [1000 + i]) for i in range(records)])
        r = self.client.post(
            f"/v1/partnerships/{self.pid}/uploads",
            json=manifest(self.client, self.a, self.pid, population, [body], records),
            headers=self.a.headers("uploader"),
        )
        assert r.status_code == 201, r.text
        return r.json()["id"], body

    def spare_key(self) -> str:
        r = self.client.post(
            "/v1/api-keys", json={"name": "spare", "role": "reader"}, headers=self.a.headers()
        )
        return str(r.json()["id"])

    def fresh_population(self) -> str:
        slug = f"tmp-{uuid.uuid4().hex[:8]}"
        r = self.client.post(
            "/v1/populations", json={"slug": slug, "kind": "other"}, headers=self.a.headers()
        )
        assert r.status_code == 201, r.text
        return slug

    def active_pid(self) -> str:
        """The A-B partnership, re-created after an `end` so that every actor gets one."""
        p = self.client.get(f"/v1/partnerships/{self.pid}", headers=self.a.headers()).json()
        if p["status"] != "active":
            self.pid = partner_up(self.client, self.a, self.b)
        return self.pid


def _manifest(w: World, actor: str) -> dict:
    from blindmap.normalize import NORMALIZER_VERSION

    me = w.a if actor.startswith("a") else w.b
    p = w.client.get(f"/v1/partnerships/{w.pid}", headers=me.headers()).json()
    return {
        "population": "customers",
        "normalizer_version": NORMALIZER_VERSION,
        "token_kinds": ["domain"],
        "key_epochs": {"mine": p["me"]["key_epoch"], "partner": p["partner"]["key_epoch"]},
        "record_count": 1,
        "chunk_count": 1,
        "digest": "0" * 64,
    }


def _request(w: World, method: str, path: str, actor: str) -> dict:
    """URL and body for one cell: A's objects, valid input, fresh where the call mutates."""
    from blindmap import crypto

    pid = w.pid
    kw: dict = {}
    url = path
    if path == "/v1/me/public-key":
        pub = crypto.encode_public_key(crypto.public_key_bytes(crypto.generate_private_key()))
        kw["json"] = {"public_key": pub}
    elif path == "/v1/api-keys" and method == "POST":
        kw["json"] = {"name": "matrix", "role": "reader"}
    elif path == "/v1/api-keys/{key_id}":
        url = f"/v1/api-keys/{w.spare_key()}"
    elif path == "/v1/populations" and method == "POST":
        kw["json"] = {"slug": f"p-{actor.replace('_', '-')}", "kind": "other"}
    elif path == "/v1/populations/{slug}":
        url = f"/v1/populations/{w.fresh_population() if method == 'DELETE' else 'a-only'}"
        if method == "PATCH":
            kw["json"] = {"display_name": f"renamed by {actor}"}
    elif path == "/v1/partnerships" and method == "POST":
        kw["json"] = {"partner": "umbrella"}
    elif path.endswith("/end"):
        url = f"/v1/partnerships/{w.active_pid()}/end"
    elif path.endswith("/policy") and method == "PUT":
        kw["json"] = {"default": "hidden", **SHARED}
    elif path.endswith("/uploads"):
        kw["json"] = _manifest(w, actor)
    elif path.startswith("/v1/uploads/"):
        up, body = w.staged_upload() if method != "GET" else (w.staged_upload()[0], b"")
        if path.endswith("/commit"):
            w.client.put(
                f"/v1/uploads/{up}/chunks/0",
                content=body,
                headers={**w.a.headers("uploader"), "content-type": "application/x-ndjson"},
            )
        url = path.replace("{upload_id}", up).replace("{n}", "0")
        if path.endswith("/chunks/{n}"):
            kw["content"] = body
            kw["headers"] = {"content-type": "application/x-ndjson"}
    elif path.endswith("/lookup"):
        kw["json"] = {"tokens": [{"value": b64(token(7))}]}  # in A's and B's lists
    url = url.replace("{partnership_id}", pid)
    assert "{" not in url, url
    return {"method": method, "url": url, **kw}


def _routes(app):
    for path, ops in app.openapi()["paths"].items():
        for method in ops:
            yield method.upper(), path


# -- the tests ----------------------------------------------------------------------------
def test_every_route_is_in_the_matrix(app):
    routes = set(_routes(app))
    missing = routes - set(MATRIX)
    assert not missing, f"add these routes to MATRIX: {sorted(missing)}"
    stale = set(MATRIX) - routes
    assert not stale, f"MATRIX lists routes the app no longer has: {sorted(stale)}"


@pytest.mark.parametrize(("method", "path"), sorted(MATRIX), ids=lambda v: str(v))
def test_matrix(app, client, tenants, method, path):
    w = World(app, client, tenants, pending=path.endswith("/accept"))
    expected = MATRIX[(method, path)]
    got: dict[str, int] = {}
    bodies: dict[str, str] = {}
    for actor in ACTORS:
        req = _request(w, method, path, actor)
        headers = {**req.pop("headers", {}), **w.headers(actor)}
        r = client.request(**req, headers=headers)
        got[actor] = r.status_code
        bodies[actor] = r.text[:300]
        if r.status_code >= 400:
            assert r.headers["content-type"] == "application/problem+json", (actor, r.text)
        if actor in ("b_admin", "b_uploader", "b_reader", "c_admin") and r.status_code == 404:
            assert str(w.a.id) not in r.text
    unexpected_allow = {
        a: got[a] for a in ACTORS if 200 <= got[a] < 300 and not 200 <= expected[a] < 300
    }
    assert not unexpected_allow, f"{method} {path}: unexpected allow {unexpected_allow}: " + str(
        {a: bodies[a] for a in unexpected_allow}
    )
    diff = {a: (expected[a], got[a]) for a in ACTORS if got[a] != expected[a]}
    assert not diff, f"{method} {path}: (expected, got) {diff}: " + str(
        {a: bodies[a] for a in diff}
    )


LEVELS = ("hidden", "count", "overlap", "full")


@pytest.mark.parametrize("level", LEVELS)
def test_partner_reports_follow_the_policy_level(app, client, tenants, level):
    """B (A's partner) calls every report at each level of A's policy for `customers`:
    the routes always answer 200, the content follows the level."""
    w = World(app, client, tenants)
    fields = ["name", "domain"] if level == "full" else ["name"] if level == "overlap" else []
    w.policy(
        w.a,
        {
            "default": "hidden",
            "min_count": 1,
            "min_population": 0,
            "populations": {"customers": {"share": level, "fields": fields}},
        },
    )
    base = f"/v1/partnerships/{w.pid}"
    for role in ("admin", "uploader", "reader"):
        h = w.b.headers(role)
        pp = client.get(f"{base}/partner-policy", headers=h)
        summary = client.get(f"{base}/reports/summary", headers=h)
        overlaps = client.get(f"{base}/reports/overlaps", params={"limit": 1000}, headers=h)
        white = client.get(f"{base}/reports/white-space", params={"limit": 1000}, headers=h)
        lookup = client.post(
            f"{base}/lookup", json={"tokens": [{"value": b64(token(7))}]}, headers=h
        )
        for r in (pp, summary, overlaps, white, lookup):
            assert r.status_code == 200, (level, role, r.request.url, r.text)
        theirs = {p["slug"] for p in summary.json()["theirs"]}
        released = {p["population"] for i in overlaps.json()["items"] for p in i["partner"]}
        looked_up = {p["population"] for x in lookup.json()["results"] for p in x["partner"]}
        ws = white.json()["items"]
        if level == "hidden":
            assert "customers" not in theirs and "customers" not in pp.text
            assert not released and not looked_up and not ws
            assert "a-only" not in summary.text
        elif level == "count":
            assert theirs == {"customers"}
            cells = {(c["mine"], c["theirs"]): c["display"] for c in summary.json()["cells"]}
            assert cells[("customers", "customers")] == "5"  # B's 5..9 match A's 0..9
            assert not released and not looked_up and not ws
        elif level == "overlap":
            assert released == {"customers"} and looked_up == {"customers"}
            assert len(overlaps.json()["items"]) == 5 and not ws
        else:
            assert released == {"customers"} and looked_up == {"customers"}
            assert len(ws) == 5  # A's 0..4 match none of B's lists
        # A's other population is never named to B
        for r in (pp, summary, overlaps, white, lookup):
            assert "a-only" not in r.text
