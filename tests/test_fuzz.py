"""API fuzzing with schemathesis against the real app, on SQLite and on PostgreSQL.

Two runs per database, both with a fixed seed:

1. **All operations, all checks** (the `--checks all` equivalent, including
   `ignored_auth`, `object_level_authorization`, `use_after_free` and
   `ensure_resource_availability`), all phases (examples, coverage, fuzzing, stateful),
   positive and negative data, authenticated as company A's admin. Company B's admin is
   A's *peer*: schemathesis replays A's successful reads as B and fails if B gets the
   same object. Path parameters resolve to real objects of A that B has no part in
   (dictionaries below, used with probability 0.7 so random ids are tried too).
2. **B against A's objects**: every operation with a path parameter, sent with B's admin
   key and A's ids only. Any 2xx, any status other than the 404/4xx-before-lookup set,
   or any A identifier in the response fails (`_foreign_object_is_404`).

Size: `FUZZ_EXAMPLES` examples per operation (default 8, about 20-30 s per database);
`make fuzz` runs 500. `FUZZ_SEED` changes the seed. A failure prints the curl command
that reproduces it and the response body.

Exclusions (also in docs/reliability.md, "API fuzzing and authorization"): see
`EXPECTED_422` — schema-valid requests that the API rejects with a 422 naming the field,
on purpose, because the rule depends on server state or on several fields at once and
cannot be written in JSON Schema. Nothing else is excluded: no operation, no check.
"""

from __future__ import annotations

import json
import os
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field

import pytest

from tests.conftest import make_tenant, partner_up, register_key
from tests.uploads import upload, wait_jobs

schemathesis = pytest.importorskip("schemathesis")

SEED = int(os.environ.get("FUZZ_SEED", "20261123"))
EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "8"))

# (operation, field named by the 422 problem) -> why a schema-valid request is refused.
# Only `positive_data_acceptance` failures whose 422 names exactly these fields are
# dropped; the response must still be a problem+json naming the field.
_ANY = "*"
EXPECTED_422 = {
    (_ANY, "cursor"): "cursors are opaque: only a cursor the API issued is accepted "
    "(a forged one is a 422, issue 8 item 8)",
    ("POST /v1/partnerships/{partnership_id}/lookup", "tokens"): "lookup answers only for "
    "accounts in the caller's own committed lists (server state, by design: DESIGN §6)",
    ("PUT /v1/me/public-key", "public_key"): "must decode to a canonical 32-byte X25519 "
    "public key that is not a low-order point",
    ("POST /v1/partnerships/{partnership_id}/uploads", "population"): "must be one of "
    "the caller's populations (server state)",
    ("POST /v1/partnerships/{partnership_id}/uploads", "token_kinds"): "must contain "
    "'domain' and no kind twice",
    ("POST /v1/partnerships/{partnership_id}/uploads", "chunk_count"): "must be able to "
    "hold record_count, and be null exactly when digest is (fields together)",
    ("POST /v1/partnerships/{partnership_id}/uploads", "digest"): "null exactly when "
    "chunk_count is (two fields together)",
    ("POST /v1/uploads/{upload_id}/commit", "chunk_count"): "must repeat the manifest's, "
    "or complete a manifest that left it open (server state)",
    ("POST /v1/uploads/{upload_id}/commit", "digest"): "as chunk_count",
    ("POST /v1/partnerships/{partnership_id}/uploads", "sealed_fields"): "only fields the "
    "caller's current policy releases (server state)",
    ("POST /v1/partnerships/{partnership_id}/uploads", "normalizer_version"): "must be a "
    "normalizer version the escrow knows",
    ("PUT /v1/uploads/{upload_id}/chunks/{n}", "n"): "must be below the manifest's "
    "chunk_count, or its record_count when it left the count for the commit (server state)",
    ("PUT /v1/uploads/{upload_id}/chunks/{n}", "body"): "a chunk is NDJSON records "
    "(docs/protocol.md §8); the schema can only say 'a string'",
    ("PUT /v1/partnerships/{partnership_id}/policy", "min_count"): "thresholds are strict "
    "integers: 5.0 (an integer for JSON Schema) is refused like '5' and true",
    ("PUT /v1/partnerships/{partnership_id}/policy", "min_population"): "as min_count",
    ("PUT /v1/partnerships/{partnership_id}/policy", "populations"): "keys must be the "
    "owner's population slugs; fields must be sealed-field names (server state)",
}


_UPLOADS = "POST /v1/partnerships/{partnership_id}/uploads"
EXPECTED_413 = {
    (_UPLOADS, "record_count"): "above the population size cap (a server setting, "
    "BLINDMAP_MAX_POPULATION_RECORDS): 413 naming `limit_records`, DESIGN §1 anti-probing",
}
# Operations the fuzzer reaches (past authentication and the object lookup) but cannot
# be expected to complete with generated data; their success paths are covered by
# tests/test_uploads.py and tests/test_reports.py.
NO_2XX_EXPECTED = {
    _UPLOADS: "a manifest must match server state (the current key epochs of both "
    "partners, which the fuzzer itself rotates, a population, the policy's fields)",
    "PUT /v1/uploads/{upload_id}/chunks/{n}": "needs NDJSON records of valid tokens",
    "POST /v1/uploads/{upload_id}/commit": "needs every chunk received and the key epochs "
    "unchanged since the manifest (the fuzzer rotates A's key)",
    "POST /v1/partnerships/{partnership_id}/lookup": "answers only for tokens of the "
    "caller's own committed records",
}


# -- the world the fuzzer walks in ------------------------------------------------------
OPEN = {
    "default": "hidden",
    "min_count": 1,
    "min_population": 0,
    "populations": {
        "customers": {"share": "full", "fields": ["name", "domain"]},
        "prospects": {"share": "overlap", "fields": ["name"]},
    },
}


def _policy(client, tenant, pid, doc):
    r = client.put(f"/v1/partnerships/{pid}/policy", json=doc, headers=tenant.headers())
    assert r.status_code == 200, r.text


def _pop(client, tenant, slug, kind="customers"):
    r = client.post("/v1/populations", json={"slug": slug, "kind": kind}, headers=tenant.headers())
    assert r.status_code == 201, r.text


@dataclass
class World:
    a: object
    b: object
    pid_ab: str  # A and B are partners
    pid_ac: str  # A's partnership with C: B has no part in it
    pid_da: str  # D invited A: A may accept it, then end it
    staged: str  # A's staged upload in pid_ac
    abortable: str  # another one, for DELETE
    committed: str  # A's committed upload in pid_ac
    a_markers: list[str] = field(default_factory=list)


def build_world(app, client, tenants) -> World:
    a, b = tenants.a, tenants.b
    c = make_tenant(app, "initech", "Initech")
    d = make_tenant(app, "hooli", "Hooli")
    e = make_tenant(app, "umbrella", "Umbrella")  # A may invite it
    for t in (a, b, c, d, e):
        register_key(client, t)
    pid_ab = partner_up(client, a, b)
    pid_ac = partner_up(client, a, c)
    for t in (a, b, c):
        _pop(client, t, "customers")
    _pop(client, a, "prospects", "prospects")
    _pop(client, a, "scratch", "other")
    for pid, other in ((pid_ab, b), (pid_ac, c)):
        _policy(client, a, pid, OPEN)
        _policy(client, other, pid, OPEN)
        upload(
            client, other, pid, "customers", [[i] for i in range(10, 40)], sealed_fields=["name"]
        )
    committed, _ = upload(client, a, pid_ac, "customers", [[i] for i in range(30)])
    upload(client, a, pid_ab, "customers", [[i] for i in range(30)])
    staged, _ = upload(client, a, pid_ac, "prospects", [[1], [2]], commit=False)
    abortable, _ = upload(client, a, pid_ab, "prospects", [[3]], commit=False)
    r = client.post("/v1/partnerships", json={"partner": a.slug}, headers=d.headers())
    assert r.status_code == 201, r.text
    wait_jobs(app)
    w = World(a, b, pid_ab, pid_ac, r.json()["id"], staged["id"], abortable["id"], committed["id"])
    w.a_markers = [str(a.id), pid_ac, w.pid_da, staged["id"], committed["id"], "initech", "hooli"]
    w.a_markers += [str(k) for k in a.key_ids.values()]
    return w


@pytest.fixture
def world(app, client, tenants) -> World:
    return build_world(app, client, tenants)


# -- schemathesis plumbing ----------------------------------------------------------------
@schemathesis.serializer("application/x-ndjson")
def _ndjson(ctx, value):
    """Upload chunks are NDJSON; the schema types the body as a string."""
    if isinstance(value, bytes):
        return value
    if isinstance(value, str):
        return value.encode("utf-8", "surrogatepass")
    return json.dumps(value).encode() + b"\n"


# Global hooks and checks are registered once per process; they act only while a run of
# this module has set them up (`_STATE`), so other schemathesis users are unaffected.
_STATE: dict[str, object] = {}


@schemathesis.hook
def before_call(context, case, kwargs):
    """Keep the objects the run stands on. Destructive operations may act on any id they
    find (the fuzzer also reuses ids seen in responses), except these, which are swapped
    for a sacrificial object of the same kind: the keys the fuzzer authenticates with,
    and the partnerships, populations and uploads the other operations read."""
    rules = _STATE.get("protect")
    if not rules or not case.path_parameters:
        return
    for (label, param), (kept, spare) in rules.items():
        if case.operation.label == label and str(case.path_parameters.get(param)) in kept:
            case.path_parameters[param] = spare


@schemathesis.check
def _foreign_object_is_404(ctx, response, case):
    """Run 2: B's request naming A's object must not reach it."""
    foreign = _STATE.get("foreign_ids")
    if not foreign or not case.path_parameters:
        return None
    if not {str(v) for v in case.path_parameters.values()} & foreign:
        return None
    status = response.status_code
    if 200 <= status < 300 or status not in (400, 404, 413, 415, 422):
        raise AssertionError(f"B got {status} for A's object: {response.text[:300]}")
    # the caller's own path is echoed in `instance` and `detail`: that reveals nothing
    sent = {str(v) for v in case.path_parameters.values()}
    leaked = [m for m in _STATE["markers"] if m not in sent and m in response.text]
    if leaked:
        raise AssertionError(f"B's response names A's objects {leaked}: {response.text[:300]}")
    return None


def _filter_failure(context, failure, case, response):
    """Keep every failure except a `positive_data_acceptance` 422 listed in EXPECTED_422,
    and one artefact of stateful link inference (a null from a response used as a path
    parameter, sent as the string 'None')."""
    if "positive_data_acceptance" not in type(failure).checks and failure.title != (
        "Schema-valid request rejected"
    ):
        return True
    if response.status_code == 413 and case.operation.label == _UPLOADS:
        return "limit_records" not in response.text  # EXPECTED_413
    if response.status_code != 422:
        return True
    if any(v in (None, "None") for v in (case.path_parameters or {}).values()):
        return False
    try:
        fields = {e["field"] for e in response.json().get("errors") or ()}
    except (ValueError, AttributeError, KeyError, TypeError):
        return True
    label = case.operation.label
    fields = {".".join(p for p in f.split(".") if not p.isdigit()) for f in fields}
    fields = {f.split(".")[0] if f.split(".")[0] == "populations" else f for f in fields}
    if fields and all((label, f) in EXPECTED_422 or (_ANY, f) in EXPECTED_422 for f in fields):
        return False
    return True


def _wfc(tmp_path, world: World):
    doc = {
        "auth": [
            {
                "name": name,
                "fixedHeaders": [
                    {"name": "Authorization", "value": f"Bearer {tenant.keys['admin']}"}
                ],
            }
            for name, tenant in (("acme-admin", world.a), ("globex-admin", world.b))
        ]
    }
    path = tmp_path / "wfc-auth.json"
    path.write_text(json.dumps(doc))
    return str(path)


def _config_all(world: World, tmp_path, examples: int):
    """Run 1: as A, every operation and check; B is A's peer."""
    a = world.a
    p = 0.7
    op_params = {
        # destructive operations get objects of their own, so that the rest keep theirs
        "POST /v1/partnerships/{partnership_id}/accept": {"path.partnership_id": "pending"},
        "POST /v1/partnerships/{partnership_id}/end": {"path.partnership_id": "pending"},
        "DELETE /v1/populations/{slug}": {"path.slug": "scratch"},
        "DELETE /v1/uploads/{upload_id}": {"path.upload_id": "abortable"},
    }
    data = {
        "seed": SEED,
        "suppress-health-check": ["all"],
        "cache": {"enabled": False},
        "generation": {"max-examples": examples, "mode": "all"},
        "checks": {"enabled": True},
        "dictionaries": {
            "partnerships": {"values": [world.pid_ac]},
            "pending": {"values": [world.pid_da]},
            "uploads": {"values": [world.staged, world.committed]},
            "abortable": {"values": [world.abortable]},
            "slugs": {"values": ["customers", "prospects"]},
            "scratch": {"values": ["scratch"]},
            "keys": {"values": [str(a.key_ids["reader"])]},
            "companies": {"values": ["umbrella"]},
        },
        "parameters": {
            "body.partner": {"dictionary": "companies", "probability": 0.5},
            "path.partnership_id": {"dictionary": "partnerships", "probability": p},
            "path.upload_id": {"dictionary": "uploads", "probability": p},
            "path.slug": {"dictionary": "slugs", "probability": p},
            "path.key_id": {"dictionary": "keys", "probability": p},
        },
        "operations": [
            {
                "include-name": name,
                "parameters": {k: {"dictionary": v, "probability": p} for k, v in params.items()},
            }
            for name, params in op_params.items()
        ],
        "auth": {"wfc": {"path": _wfc(tmp_path, world), "peers": ["acme-admin", "globex-admin"]}},
    }
    return schemathesis.config.SchemathesisConfig.from_dict(data)


def _config_foreign(world: World, tmp_path, examples: int):
    """Run 2: B's admin key, A's ids only, operations with path parameters."""
    a = world.a
    data = {
        "seed": SEED,
        "suppress-health-check": ["all"],
        "cache": {"enabled": False},
        "generation": {"max-examples": examples, "mode": "positive"},
        "phases": {"stateful": {"enabled": False}},
        "checks": {"enabled": True},
        "dictionaries": {
            "partnerships": {"values": [world.pid_ac, world.pid_da]},
            "uploads": {"values": [world.staged, world.committed]},
            "slugs": {"values": ["prospects", "scratch"]},
            "keys": {"values": [str(k) for k in a.key_ids.values()]},
            "n": {"values": [0]},
        },
        "parameters": {
            "path.partnership_id": {"dictionary": "partnerships", "probability": 1.0},
            "path.upload_id": {"dictionary": "uploads", "probability": 1.0},
            "path.slug": {"dictionary": "slugs", "probability": 1.0},
            "path.key_id": {"dictionary": "keys", "probability": 1.0},
            "path.n": {"dictionary": "n", "probability": 1.0},
        },
        "operations": [
            {"include-path-regex": "^/healthz$|^/readyz$|^/v1/[^{]*$", "enabled": False}
        ],
        "auth": {"wfc": {"path": _wfc(tmp_path, world), "user": "globex-admin"}},
    }
    return schemathesis.config.SchemathesisConfig.from_dict(data)


@dataclass
class RunResult:
    failures: list[str]
    statuses: dict[str, Counter]
    seconds: float
    errors: list[str]

    def report(self) -> str:
        lines = [f"{len(self.failures)} failure(s), {len(self.errors)} error(s):"]
        lines += self.failures[:40] + self.errors[:20]
        return "\n\n".join(lines)


def _run(app, config, *, filter_failure=None) -> RunResult:
    from schemathesis.engine import events, from_schema
    from schemathesis.python import asgi

    started = time.monotonic()
    schema = schemathesis.openapi.from_asgi("/openapi.json", app, config=config)
    if filter_failure is not None:
        schema.hook("filter_failure")(filter_failure)
    failures: list[str] = []
    errors: list[str] = []
    seen: set[tuple] = set()
    statuses: dict[str, Counter] = defaultdict(Counter)
    try:
        for event in from_schema(schema).execute():
            if isinstance(event, events.ScenarioFinished):
                rec = event.recorder
                for case_id, inter in rec.interactions.items():
                    if inter.response is None:
                        continue
                    node = rec.cases.get(case_id)
                    label = node.value.operation.label if node else rec.label
                    statuses[label][inter.response.status_code] += 1
                for case_id, nodes in rec.checks.items():
                    for n in nodes:
                        if n.failure_info is None:
                            continue
                        f = n.failure_info.failure
                        inter = rec.interactions.get(case_id)
                        node = rec.cases.get(case_id)
                        # the hook is not consulted in every phase: apply it here too
                        if (
                            filter_failure is not None
                            and node is not None
                            and inter is not None
                            and inter.response is not None
                            and not filter_failure(None, f, node.value, inter.response)
                        ):
                            continue
                        key = (f.operation, n.name, f.title, getattr(f, "_unique_key", ""))
                        if key in seen:
                            continue
                        seen.add(key)
                        body = inter.response.content[:400] if inter and inter.response else b""
                        failures.append(
                            f"[{n.name}] {f.operation}: {f.title}\n{f.message[:500]}\n"
                            f"{n.failure_info.code_sample}\n-> {body.decode('utf-8', 'replace')}"
                        )
            elif isinstance(event, events.NonFatalError):
                errors.append(f"[error] {event.label}: {event.info.message}")
            elif isinstance(event, events.FatalError):
                raise event.exception
    finally:
        # schemathesis keeps the app's lifespan (and so its job worker) running for the
        # whole process unless told otherwise
        asgi.shutdown_lifespans()
    return RunResult(failures, dict(statuses), time.monotonic() - started, errors)


def _operations(app) -> set[str]:
    return {
        f"{method.upper()} {path}" for path, ops in app.openapi()["paths"].items() for method in ops
    }


# -- the tests ----------------------------------------------------------------------------
def test_fuzz_every_operation_with_every_check(app, client, world, tmp_path, backend):
    admin_keys = {str(world.a.key_ids["admin"]), str(world.b.key_ids["admin"])}
    partnerships = {world.pid_ab, world.pid_ac}
    uploads = {world.staged, world.committed}
    _STATE["protect"] = {
        ("DELETE /v1/api-keys/{key_id}", "key_id"): (admin_keys, str(world.a.key_ids["reader"])),
        ("POST /v1/partnerships/{partnership_id}/end", "partnership_id"): (
            partnerships,
            world.pid_da,
        ),
        ("DELETE /v1/populations/{slug}", "slug"): ({"customers", "prospects"}, "scratch"),
        ("DELETE /v1/uploads/{upload_id}", "upload_id"): (uploads, world.abortable),
    }
    try:
        result = _run(app, _config_all(world, tmp_path, EXAMPLES), filter_failure=_filter_failure)
    finally:
        _STATE.clear()
    print(f"\nschemathesis on {backend}: {result.seconds:.1f} s, {EXAMPLES} examples/operation")
    for label in sorted(result.statuses):
        print(f"  {label}: {dict(sorted(result.statuses[label].items()))}")
    assert not result.failures and not result.errors, result.report()
    untested = _operations(app) - set(result.statuses)
    assert not untested, f"operations schemathesis never called: {sorted(untested)}"
    # the dictionaries take the fuzzer past 404: every operation got a 2xx at least once
    no_success = sorted(
        label
        for label, counts in result.statuses.items()
        if label in _operations(app) and not any(200 <= s < 300 for s in counts)
    )
    assert set(no_success) <= set(NO_2XX_EXPECTED), f"never succeeded: {no_success}"
    # ... and every operation got past authentication and, where it has one, the lookup
    # of its object at least once
    for label in _operations(app):
        assert set(result.statuses[label]) - {401, 404, 405}, (label, result.statuses[label])


def test_fuzz_company_b_against_company_a_objects(app, client, world, tmp_path, backend):
    _STATE.update(
        foreign_ids={
            world.pid_ac,
            world.pid_da,
            world.staged,
            world.committed,
            "prospects",
            "scratch",
            *(str(k) for k in world.a.key_ids.values()),
        },
        markers=world.a_markers,
    )
    try:
        result = _run(
            app,
            _config_foreign(world, tmp_path, max(2, EXAMPLES // 2)),
            filter_failure=_filter_failure,
        )
    finally:
        _STATE.clear()
    print(f"\nB against A on {backend}: {result.seconds:.1f} s")
    for label in sorted(result.statuses):
        print(f"  {label}: {dict(sorted(result.statuses[label].items()))}")
    assert not result.failures and not result.errors, result.report()
    with_params = {op for op in _operations(app) if "{" in op}
    assert with_params <= set(result.statuses), sorted(with_params - set(result.statuses))
    for label in with_params:
        assert result.statuses[label][404] >= 1, (label, result.statuses[label])
    # A's objects are untouched
    h = world.a.headers()
    assert client.get(f"/v1/partnerships/{world.pid_ac}", headers=h).json()["status"] == "active"
    assert client.get("/v1/populations/scratch", headers=h).status_code == 200
    up = client.get(f"/v1/uploads/{world.staged}", headers=h).json()
    assert up["status"] == "staged"
    assert client.get("/v1/me", headers=world.a.headers("reader")).status_code == 200


# -- regressions of what the fuzzer found -------------------------------------------------
@pytest.mark.parametrize("name", ["\x00", "a\x00b", "tab\tinside", " ", "\x7f"])
def test_found_by_fuzzing_control_characters_in_names_are_422(client, tenants, name):
    """A NUL in a key or population name was a 500 on PostgreSQL (text cannot hold NUL)."""
    h = tenants.a.headers()
    r = client.post("/v1/api-keys", json={"name": name, "role": "reader"}, headers=h)
    assert r.status_code == 422 and r.json()["errors"][0]["field"] == "name", r.text
    client.post("/v1/populations", json={"slug": "customers", "kind": "customers"}, headers=h)
    r = client.patch("/v1/populations/customers", json={"display_name": name}, headers=h)
    assert r.status_code == 422 and r.json()["errors"][0]["field"] == "display_name", r.text


def test_found_by_fuzzing_405_lists_every_method_of_the_path(client):
    r = client.options("/v1/populations/customers")
    assert r.status_code == 405
    assert r.headers["allow"] == "DELETE, GET, PATCH"
    assert r.headers["content-type"] == "application/problem+json"
