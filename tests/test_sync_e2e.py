"""`blindmap sync` end to end: the real CLI and SDK against the real app in-process, on
SQLite and PostgreSQL, with the sample exports in examples/."""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select

import blindmap
from blindmap import cli, keyfile, normalize
from blindmap import sync as bsync
from blindmap._errors import APIConnectionError

REPO = Path(__file__).resolve().parent.parent
ACME = REPO / "examples" / "acme-salesforce-accounts.csv"
GLOBEX = REPO / "examples" / "globex-hubspot-companies.csv"
ACME_MAP = "Customer=customers,Prospect=prospects"
GLOBEX_MAP = "customer=customers,opportunity=opportunities,lead=prospects"


def _json(result: Any) -> Any:
    assert result.exit_code == 0, result.output
    return json.loads(result.output)


@pytest.fixture
def partnered(as_company, tenants):  # type: ignore[no-untyped-def]
    """Acme and Globex with key files, an active partnership and co-sell policies."""
    a, b = tenants.a, tenants.b
    for t in (a, b):
        _json(as_company(t, "--json", "init", "--register"))
    pid = _json(as_company(a, "--json", "partners", "invite", "globex"))["id"]
    _json(as_company(b, "--json", "partners", "accept", "acme"))
    co_sell = str(REPO / "policies" / "co-sell.yaml")
    assert as_company(a, "policy", "apply", pid, co_sell).exit_code == 0
    assert as_company(b, "policy", "apply", "acme", co_sell).exit_code == 0
    return pid


def _expected_domains(path: Path, column: str, mapping: dict[str, str]) -> dict[str, set[str]]:
    """Plaintext ground truth, independently of blindmap.sync: population → domains."""
    out: dict[str, set[str]] = {}
    with path.open(newline="", encoding="utf-8-sig") as f:
        for row in csv.DictReader(f):
            pop = mapping.get(row[column].strip().casefold())
            if pop is None:
                continue
            cells = [row.get("Company Domain Name"), row.get("Website URL"), row.get("Website")]
            doms = [normalize.domain(c) for c in cells if c is not None]
            dom = next((d for d in doms if d), None)
            if dom:
                out.setdefault(pop, set()).add(dom)
    return out


def _wait_matched(sdk_client: blindmap.Client, pid: str) -> Any:
    deadline = time.monotonic() + 60
    while True:
        st = sdk_client.sync_status(pid)
        if st.mine and all(m.match_job and m.match_job.value == "done" for m in st.mine):
            return st
        failed = [m for m in st.mine if m.match_job and m.match_job.value == "failed"]
        assert not failed, st
        assert time.monotonic() < deadline, st
        time.sleep(0.1)


def _needles() -> set[str]:
    """Every domain, website, name, email and CRM id in the sample files."""
    out: set[str] = set()
    for path in (ACME, GLOBEX):
        with path.open(newline="", encoding="utf-8-sig") as f:
            for row in csv.DictReader(f):
                for col in (
                    "Account Name",
                    "Company name",
                    "Website",
                    "Website URL",
                    "Company Domain Name",
                    "Account Owner Email",
                    "Owner email",
                    "Account ID",
                ):
                    v = (row.get(col) or "").strip()
                    if len(v) >= 5 and not v.isdigit():
                        out.add(v)
                for col in ("Website", "Website URL", "Company Domain Name"):
                    d = normalize.domain(row.get(col))
                    if d:
                        out.add(d)
    return out


def _dump(database_url: str, engine: Any) -> bytes:
    if database_url.startswith("sqlite"):
        engine.dispose()  # checkpoint the WAL into the file
        db = Path(database_url.removeprefix("sqlite:///"))
        return b"".join(p.read_bytes() for p in (db, Path(f"{db}-wal")) if p.exists())
    if shutil.which("pg_dump") is None:
        pytest.skip("pg_dump not installed")
    url = engine.url
    env = {**os.environ, "PGCONNECT_TIMEOUT": "5"}
    cmd = ["pg_dump", "-h", url.host, "-p", str(url.port), "-U", url.username, url.database]
    return subprocess.run(cmd, check=True, capture_output=True, env=env).stdout


def test_two_companies_sync_the_sample_exports(  # type: ignore[no-untyped-def]
    as_company, tenants, partnered, sdk, session, database_url, engine, tmp_path
):
    a, b = tenants.a, tenants.b
    pid = partnered
    skipped_csv = tmp_path / "skipped.csv"
    out_a = _json(
        as_company(
            a,
            "--json",
            "sync",
            str(ACME),
            "--partner",
            "globex",
            "--population-column",
            "Type",
            "--map",
            ACME_MAP,
            "--chunk-size",
            "100",
            "--skipped-file",
            str(skipped_csv),
        )
    )
    out_b = _json(
        as_company(
            b,
            "--json",
            "sync",
            str(GLOBEX),
            "--all",
            "--population-column",
            "Lifecycle Stage",
            "--map",
            GLOBEX_MAP,
        )
    )
    exp_a = _expected_domains(ACME, "Type", {"customer": "customers", "prospect": "prospects"})
    exp_b = _expected_domains(
        GLOBEX,
        "Lifecycle Stage",
        {"customer": "customers", "opportunity": "opportunities", "lead": "prospects"},
    )
    for out, exp in ((out_a, exp_a), (out_b, exp_b)):
        assert sorted(out["created_populations"]) == sorted(exp)
        got = {u["population"]: u for u in out["uploads"]}
        assert {p: u["records"] for p, u in got.items()} == {p: len(d) for p, d in exp.items()}
        assert all(
            u["status"] == "committed" and u["token_kinds"] == ["domain"] for u in got.values()
        )
        assert got["customers"]["sealed_fields"] == ["name", "owner_email"]
        assert got["prospects"]["sealed_fields"] == []
        assert out["skipped"]["free-mail"] > 0 and out["skipped"]["duplicate"] > 0
    assert out_a["uploads"][0]["chunks"] == 2  # 181 customers in chunks of 100

    with skipped_csv.open(newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == sum(out_a["skipped"].values())
    assert {"line", "reason", "population", "Account Name"} <= set(rows[0])

    st_a = _wait_matched(sdk(a), pid)
    _wait_matched(sdk(b), pid)
    assert {m.population: m.records for m in st_a.mine} == {p: len(d) for p, d in exp_a.items()}

    # the escrow matched exactly what a plaintext comparison of the domains gives
    from service.models import matches

    expected = sum(len(da & db) for da in exp_a.values() for db in exp_b.values())
    assert expected >= 50
    got_matches = session.execute(
        select(func.count())
        .select_from(matches)
        .where(matches.c.partnership_id == __import__("uuid").UUID(pid))
    ).scalar_one()
    assert got_matches == expected

    # nothing the escrow stored names an account
    dump = _dump(database_url, engine).lower()
    needles = _needles()
    assert len(needles) > 400
    leaked = sorted(n for n in needles if n.lower().encode() in dump)
    assert leaked == []


def test_resume_after_failure_and_shrink_guard(  # type: ignore[no-untyped-def]
    as_company, tenants, partnered, sdk, tmp_path, monkeypatch
):
    monkeypatch.setattr(bsync, "_sleep", lambda s: None)
    a = tenants.a
    pid = partnered
    key_file = tmp_path / a.slug / "key.pem"
    private = keyfile.load_private_key(key_file)

    class Flaky(blindmap.Client):
        def put_chunk(self, upload_id, n, body, **kw):  # type: ignore[no-untyped-def]
            if n == 2:
                raise APIConnectionError("connection reset by peer")
            return super().put_chunk(upload_id, n, body, **kw)

    base = sdk(a)
    flaky = Flaky(a.keys["admin"], base_url=base.base_url, http_client=base._http)
    kw: dict[str, Any] = {
        "private_key": private,
        "partners": ["globex"],
        "population": "customers",
        "chunk_size": 40,
        "key_file": key_file,
        "send_ahead": 2,
    }
    with pytest.raises(bsync.SyncError, match="run the same command again"):
        bsync.sync(flaky, ACME, **kw)
    staged_dir = bsync.default_state_dir(key_file) / f"{pid}-customers"
    state = json.loads((staged_dir / "state.json").read_text())
    up = base.get_upload(state["upload_id"])
    # two chunks in flight: chunks after the failing one may have landed as well
    assert up.status.value == "staged" and {0, 1} <= set(up.received_chunks)
    assert 2 not in up.received_chunks
    assert base.sync_status(pid).mine == []  # nothing visible before the commit

    uploader = sdk(a, "uploader")
    report = bsync.sync(uploader, ACME, **kw)
    (u,) = report.uploads
    assert u.resumed and u.upload_id == state["upload_id"] and u.status == "committed"
    assert base.get_upload(u.upload_id).status.value == "committed"
    assert not staged_dir.exists()

    # a much smaller list is refused unless confirmed; the CLI says how
    small = tmp_path / "small.csv"
    small.write_text("Account ID,Account Name,Website\n1,Solo,solo-corp.com\n", encoding="utf-8")
    args = ("sync", str(small), "--partner", "globex", "--population", "customers")
    refused = as_company(a, *args)
    assert refused.exit_code == cli.EXIT_REJECTED and "--confirm-shrink" in refused.output
    ok = _json(as_company(a, "--json", *args, "--confirm-shrink"))
    assert ok["uploads"][0]["records"] == 1 and ok["uploads"][0]["status"] == "committed"


def test_cli_dry_run_and_input_errors(as_company, tenants, partnered, sdk, tmp_path):  # type: ignore[no-untyped-def]
    a = tenants.a
    dry = as_company(
        a,
        "sync",
        str(ACME),
        "--all",
        "--population-column",
        "Type",
        "--map",
        ACME_MAP,
        "--dry-run",
    )
    assert dry.exit_code == 0, dry.output
    assert "Dry run: nothing was sent." in dry.output and "free-mail" in dry.output
    assert sdk(a).sync_status(partnered).mine == []
    assert {p.slug for p in sdk(a).list_populations()} == set()

    bad = tmp_path / "bad.csv"
    bad.write_bytes(b"Id,Name,Website\n1,A,a-corp.com\n2,B,b.com,extra\n")
    res = as_company(a, "sync", str(bad), "--all", "--population", "customers")
    assert res.exit_code == cli.EXIT_USAGE and f"{bad}:3:" in res.output.replace("\n", "")
    res = as_company(a, "sync", str(ACME), "--population", "customers")
    assert res.exit_code == cli.EXIT_USAGE and "--partner" in res.output
    res = as_company(a, "sync", str(ACME), "--partner", "initrode", "--population", "customers")
    assert res.exit_code == cli.EXIT_NOT_FOUND
    res = as_company(
        a, "sync", str(ACME), "--all", "--population", "customers", "--column-map", "website=Nope"
    )
    assert res.exit_code == cli.EXIT_USAGE and ":1:" in res.output


def test_name_tokens_when_both_policies_match_on_name(  # type: ignore[no-untyped-def]
    as_company, tenants, partnered, sdk
):
    from blindmap.policy import load_template

    doc = {**load_template("co-sell").model_dump(mode="json"), "match_on": ["domain", "name"]}
    for t in (tenants.a, tenants.b):
        c = sdk(t)
        c.put_policy(c.list_partnerships()[0].id, doc)
    out = _json(
        as_company(
            tenants.b,
            "--json",
            "sync",
            str(GLOBEX),
            "--all",
            "--population-column",
            "Lifecycle Stage",
            "--map",
            GLOBEX_MAP,
        )
    )
    assert {tuple(u["token_kinds"]) for u in out["uploads"]} == {("domain", "name")}
    up = sdk(tenants.b).get_upload(out["uploads"][0]["upload_id"])
    assert up.status.value == "committed" and [k.value for k in up.token_kinds] == [
        "domain",
        "name",
    ]
