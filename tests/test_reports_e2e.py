"""`blindmap report` and `blindmap disclosures` end to end: the real CLI and SDK against
the real app in-process, on SQLite and PostgreSQL, with the sample exports in examples/.

Every report is compared with a reference computed here from the plaintext CSV files.
"""

from __future__ import annotations

import csv
import io
import json
import uuid
from pathlib import Path
from typing import Any

import pytest

from blindmap import cli, normalize
from tests.conftest import make_tenant
from tests.uploads import wait_jobs

REPO = Path(__file__).resolve().parent.parent
ACME = REPO / "examples" / "acme-salesforce-accounts.csv"
GLOBEX = REPO / "examples" / "globex-hubspot-companies.csv"
ACME_MAP = {"customer": "customers", "prospect": "prospects"}
GLOBEX_MAP = {"customer": "customers", "opportunity": "opportunities", "lead": "prospects"}
POLICIES = REPO / "policies"


# -- plaintext reference ---------------------------------------------------------------------
def _rows(path: Path, column: str | None, mapping: dict[str, str] | None, website: tuple[str, ...]):
    """population → {domain: row} as `sync` keeps them (first row of a domain wins)."""
    out: dict[str, dict[str, dict[str, str]]] = {}
    with path.open(newline="", encoding="utf-8-sig") as f:
        for row in csv.DictReader(f):
            if column is None:
                pop: str | None = "customers"
            else:
                assert mapping is not None
                pop = mapping.get(row[column].strip().casefold())
            if pop is None:
                continue
            doms = [normalize.domain(row.get(c)) for c in website if row.get(c) is not None]
            dom = next((d for d in doms if d), None)
            if dom:
                out.setdefault(pop, {}).setdefault(dom, row)
    return out


def acme_ref():
    return _rows(ACME, "Type", ACME_MAP, ("Website",))


def globex_ref(column: str | None = "Lifecycle Stage"):
    return _rows(
        GLOBEX,
        column,
        GLOBEX_MAP if column else None,
        ("Company Domain Name", "Website URL"),
    )


def _squash(s: str | None) -> str:
    return " ".join((s or "").split())


def _sync_samples(as_company, a, b) -> None:  # type: ignore[no-untyped-def]
    """Acme syncs the Salesforce sample, Globex the HubSpot one, to all their partners."""
    acme_map = "Customer=customers,Prospect=prospects"
    _ok(as_company(a, "sync", str(ACME), "--all", "--population-column", "Type", "--map", acme_map))
    globex_map = "customer=customers,opportunity=opportunities,lead=prospects"
    _ok(
        as_company(
            b,
            "sync",
            str(GLOBEX),
            "--all",
            "--population-column",
            "Lifecycle Stage",
            "--map",
            globex_map,
        )
    )


def _ok(result: Any) -> str:
    assert result.exit_code == 0, result.output
    return str(result.output)


def _json(result: Any) -> Any:
    return json.loads(_ok(result))


@pytest.fixture
def mapped(as_company, tenants, app):  # type: ignore[no-untyped-def]
    """Acme (co-sell) and Globex (open-book) partnered, both sample exports synced and
    matched. Returns the partnership id."""
    a, b = tenants.a, tenants.b
    for t in (a, b):
        _json(as_company(t, "--json", "init", "--register"))
    pid = _json(as_company(a, "--json", "partners", "invite", "globex"))["id"]
    _json(as_company(b, "--json", "partners", "accept", "acme"))
    _ok(as_company(a, "policy", "apply", "globex", str(POLICIES / "co-sell.yaml")))
    _ok(as_company(b, "policy", "apply", "acme", str(POLICIES / "open-book.yaml")))
    _sync_samples(as_company, a, b)
    wait_jobs(app)
    return pid


# -- reports ---------------------------------------------------------------------------------
def test_summary_matches_the_plaintext_matrix(as_company, tenants, mapped) -> None:  # type: ignore[no-untyped-def]
    a = tenants.a
    doc = _json(as_company(a, "report", "summary", "globex", "--format", "json", role="reader"))
    assert doc["report"] == "summary"
    assert doc["partnership"]["id"] == mapped and doc["partnership"]["partner"] == "globex"
    assert set(doc["policy_versions"]) == {"mine", "partner"}
    s = doc["summary"]
    ra, rg = acme_ref(), globex_ref()
    assert {p["slug"]: p["records"] for p in s["mine"]} == {p: len(d) for p, d in ra.items()}
    assert {p["slug"] for p in s["theirs"]} == set(rg)  # open-book shows all three
    cells = {(c["mine"], c["theirs"]): c for c in s["cells"]}
    assert set(cells) == {(m, t) for m in ra for t in rg}
    for (m, t), c in cells.items():
        n = len(set(ra[m]) & set(rg[t]))
        if n >= s["min_count"]:
            assert (c["matched"], c["display"]) == (n, str(n)), (m, t)
        else:
            assert c["matched"] is None and c["display"] == f"<{s['min_count']}", (m, t, n)
    assert cells["customers", "customers"]["matched"] == 20  # examples/README.md

    table = _ok(as_company(a, "report", "summary", "globex", role="reader"))
    assert "Globex Cloud (globex)" in table and "Policy versions: mine v" in table
    assert "customers (181)" in table

    rows = list(
        csv.DictReader(
            io.StringIO(_ok(as_company(a, "report", "summary", "globex", "--format", "csv")))
        )
    )
    assert len(rows) == len(cells) and rows[0]["partner"] == "globex"


def test_overlaps_decrypt_to_the_plaintext_join(as_company, tenants, mapped) -> None:  # type: ignore[no-untyped-def]
    a = tenants.a
    doc = _json(as_company(a, "--json", "report", "overlaps", "globex", role="reader"))
    assert doc["report"] == "overlaps" and doc["undecryptable"] == 0
    ra, rg = acme_ref(), globex_ref()
    expected = {
        (d, m, t) for m, dm in ra.items() for t, dt in rg.items() for d in set(dm) & set(dt)
    }
    got = set()
    for o in doc["overlaps"]:
        mine = o["mine"]
        assert mine["status"] == "ok"
        row = ra[mine["population"]][mine["domain"]]
        assert mine["id"] == row["Account ID"]  # the local id came back from my sealed payload
        assert _squash(mine["name"]) == _squash(row["Account Name"])
        for rel in o["partner"]:
            got.add((mine["domain"], mine["population"], rel["population"]))
            grow = rg[rel["population"]][mine["domain"]]
            assert rel["status"] == "ok", rel
            fields = rel["fields"]
            # exactly what Globex's open-book policy releases for that population
            allowed = {
                "customers": {"name", "domain", "owner_email"},
                "opportunities": {"name", "domain", "owner_email", "stage"},
                "prospects": {"name", "owner_email"},
            }[rel["population"]]
            assert set(fields) == allowed
            assert _squash(fields["name"]) == _squash(grow["Company name"])
            assert fields["owner_email"] == grow["Owner email"]
    assert got == expected

    # co-sell filter: their customers that are my prospects; CSV and table agree
    out = _ok(
        as_company(
            a,
            "report",
            "overlaps",
            "globex",
            "--mine",
            "prospects",
            "--theirs",
            "customers",
            "--format",
            "csv",
            role="reader",
        )
    )
    rows = list(csv.DictReader(io.StringIO(out)))
    assert {(r["my_domain"], r["their_population"]) for r in rows} == {
        (d, "customers") for d in set(ra["prospects"]) & set(rg["customers"])
    }
    assert all(r["policy_version_partner"] for r in rows)


def test_white_space_is_their_full_populations_minus_mine(as_company, tenants, mapped) -> None:  # type: ignore[no-untyped-def]
    a = tenants.a
    ra, rg = acme_ref(), globex_ref()
    mine_all = set().union(*map(set, ra.values()))
    doc = _json(as_company(a, "--json", "report", "white-space", "globex", role="reader"))
    got = {(w["population"], w["fields"]["domain"]) for w in doc["white_space"]}
    expected = {(t, d) for t in ("customers", "opportunities") for d in set(rg[t]) - mine_all}
    assert got == expected
    assert all(w["status"] == "ok" and w["fields"]["name"] for w in doc["white_space"])

    doc = _json(
        as_company(
            a,
            "--json",
            "report",
            "white-space",
            "globex",
            "--theirs",
            "customers",
            "--not-in",
            "customers",
            role="reader",
        )
    )
    got = {(w["population"], w["fields"]["domain"]) for w in doc["white_space"]}
    assert got == {("customers", d) for d in set(rg["customers"]) - set(ra["customers"])}


def test_lookup(as_company, tenants, mapped) -> None:  # type: ignore[no-untyped-def]
    a = tenants.a
    ra, rg = acme_ref(), globex_ref()
    both = sorted(set(ra["customers"]) & set(rg["customers"]))[0]
    only_mine = sorted(set(ra["customers"]) - set().union(*map(set, rg.values())))[0]
    doc = _json(
        as_company(
            a,
            "--json",
            "report",
            "lookup",
            "globex",
            f"https://www.{both}/about",
            only_mine,
            role="reader",
        )
    )
    found, missing = doc["lookup"]
    assert (found["domain"], found["found"]) == (both, True)
    assert {r["population"] for r in found["partner"]} >= {"customers"}
    assert _squash(found["partner"][0]["fields"]["name"]) == _squash(
        rg[found["partner"][0]["population"]][both]["Company name"]
    )
    assert (missing["domain"], missing["found"], missing["partner"]) == (only_mine, False, [])

    # not an account of my own lists: the escrow refuses, the CLI says why
    theirs_only = sorted(set(rg["customers"]) - set().union(*map(set, ra.values())))[0]
    r = as_company(a, "report", "lookup", "globex", theirs_only, role="reader")
    assert r.exit_code == cli.EXIT_REJECTED, r.output
    assert "only for accounts in your own lists" in r.output

    r = as_company(a, "report", "lookup", "globex", "someone@gmail.com", role="reader")
    assert r.exit_code == cli.EXIT_USAGE and "no matchable domain" in r.output


def test_html_report_file(as_company, tenants, mapped, tmp_path) -> None:  # type: ignore[no-untyped-def]
    a = tenants.a
    r = as_company(a, "report", "html", "globex", role="reader")
    assert r.exit_code == 0, r.output
    page = (tmp_path / "blindmap-report.html").read_text(encoding="utf-8")
    assert "Account mapping" in page and "Overlaps" in page and "White space" in page
    assert "Globex Cloud" in page and "Policy versions" in page
    assert "<script" not in page.lower()
    ra, rg = acme_ref(), globex_ref()
    some = sorted(set(ra["customers"]) & set(rg["customers"]))[0]
    assert some in page
    out = tmp_path / "summary.html"
    _ok(as_company(a, "report", "summary", "globex", "--format", "html", "-o", str(out)))
    assert "Account mapping" in out.read_text(encoding="utf-8")


def test_ecosystem_joins_partnerships_by_my_local_id(as_company, tenants, app) -> None:  # type: ignore[no-untyped-def]
    a, b = tenants.a, tenants.b
    c = make_tenant(app, "initech", "Initech Systems")
    for t in (a, b, c):
        _json(as_company(t, "--json", "init", "--register"))
    for partner in (b, c):
        _json(as_company(a, "--json", "partners", "invite", partner.slug))
        _json(as_company(partner, "--json", "partners", "accept", "acme"))
        _ok(as_company(a, "policy", "apply", partner.slug, str(POLICIES / "co-sell.yaml")))
        _ok(as_company(partner, "policy", "apply", "acme", str(POLICIES / "open-book.yaml")))
    _sync_samples(as_company, a, b)
    _ok(as_company(c, "sync", str(GLOBEX), "--all", "--population", "customers"))
    wait_jobs(app)

    doc = _json(as_company(a, "report", "ecosystem", "--format", "json", role="reader"))
    assert doc["report"] == "ecosystem" and doc["undecryptable"] == 0
    assert sorted(p["partner"] for p in doc["partnerships"]) == ["globex", "initech"]
    assert all(p["policy_versions"] for p in doc["partnerships"])
    ra, rg, rc = acme_ref(), globex_ref(), globex_ref(column=None)
    g_all = set().union(*map(set, rg.values()))
    c_all = set(rc["customers"])
    expected: dict[str, set[str]] = {}
    for pop, doms in ra.items():
        for d, row in doms.items():
            partners = {p for p, have in (("globex", g_all), ("initech", c_all)) if d in have}
            if partners:
                expected.setdefault(row["Account ID"], set()).update(partners)
    got = {acc["id"]: {h["partner"] for h in acc["partners"]} for acc in doc["accounts"]}
    assert got == expected
    assert any(len(v) == 2 for v in got.values())
    first = doc["accounts"][0]
    assert len(first["partners"]) == 2  # accounts most partners have come first
    table = _ok(as_company(a, "report", "ecosystem", role="reader"))
    assert "Ecosystem of 2 partnership(s)" in table


# -- disclosure log --------------------------------------------------------------------------
def test_disclosures_list_verify_and_tamper(as_company, tenants, mapped, session) -> None:  # type: ignore[no-untyped-def]
    a, b = tenants.a, tenants.b
    _ok(as_company(a, "report", "overlaps", "globex", "--format", "json", role="reader"))
    _ok(as_company(a, "report", "white-space", "globex", "--format", "json", role="reader"))
    _ok(as_company(b, "report", "overlaps", "acme", "--format", "json", role="reader"))

    entries = _json(as_company(a, "--json", "disclosures", "list", "globex"))
    assert len(entries) >= 3
    assert [e["seq"] for e in entries] == list(range(1, len(entries) + 1))
    assert {(e["viewer"], e["owner"]) for e in entries} >= {("acme", "globex"), ("globex", "acme")}
    assert entries == _json(as_company(b, "disclosures", "list", "acme", "--format", "json"))
    table = _ok(as_company(a, "disclosures", "list", "globex"))
    assert "Disclosure log" in table and "acme" in table

    for t, partner in ((a, "globex"), (b, "acme")):
        out = _ok(as_company(t, "disclosures", "verify", partner, role="reader"))
        assert "OK" in out and f"{len(entries)} entries" in out
    assert _json(as_company(a, "--json", "disclosures", "verify", "globex"))["ok"] is True

    from service.models import Disclosure

    pid = uuid.UUID(mapped)
    entry = session.get(Disclosure, (pid, 2))
    assert entry is not None
    entry.records += 1
    session.commit()
    r = as_company(a, "disclosures", "verify", "globex")
    assert r.exit_code == cli.EXIT_REJECTED
    assert "BROKEN" in r.output and "entry 2" in r.output
    doc = json.loads(as_company(b, "--json", "disclosures", "verify", "acme").output)
    assert doc["ok"] is False and doc["seq"] == 2

    entry.records -= 1
    session.commit()
    _ok(as_company(a, "disclosures", "verify", "globex"))
    session.delete(session.get(Disclosure, (pid, 1)))
    session.commit()
    r = as_company(a, "disclosures", "verify", "globex")
    assert r.exit_code == cli.EXIT_REJECTED and "entry" in r.output


def test_reports_read_ahead_match_page_by_page(client, tenants, mapped, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """`overlap_rows` / `white_space_rows` (what the CLI uses: each page decrypted while
    the next is fetched) give exactly what fetching every page, then decrypting, gives;
    small pages make it several."""
    import blindmap
    from blindmap import keyfile
    from blindmap import reports as rep

    private = keyfile.load_private_key(tmp_path / "acme" / "key.pem", passphrase=None)
    sdk = blindmap.Client(
        base_url="http://testserver", api_key=tenants.a.keys["reader"], http_client=client
    )
    p = sdk.get_partnership(mapped)
    keys = rep.ReportKeys.for_partnership(private, p)
    items, versions, _ = rep.fetch_overlaps(sdk, p.id, limit=1000)
    assert len(items) > 6  # several pages of 3 below
    pages = []
    rows, v2, notes = rep.overlap_rows(sdk, keys, p.id, limit=3, on_progress=pages.append)
    assert rows == rep.decrypt_overlaps(keys, items) and v2 == versions and notes == []
    assert pages == [min(3 * (i + 1), len(items)) for i in range(len(pages))]
    ws, _, _ = rep.fetch_white_space(sdk, p.id, limit=1000)
    released, _, _ = rep.white_space_rows(sdk, keys, p.id, limit=2)
    assert len(ws) > 2 and released == rep.decrypt_white_space(keys, ws)
