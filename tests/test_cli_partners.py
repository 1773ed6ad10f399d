"""`blindmap init --register`, `partners …`, `policy …`, `populations …`, `audit` against the
real app in-process, each company with its own key file."""

from __future__ import annotations

import json
from pathlib import Path

from blindmap import cli

REPO = Path(__file__).resolve().parent.parent


def _json(result):
    assert result.exit_code == 0, result.output
    return json.loads(result.output)


def test_partnership_walkthrough(as_company, tenants):
    a, b = tenants.a, tenants.b
    for t in (a, b):
        out = _json(as_company(t, "--json", "init", "--register"))
        assert out["key_epoch"] == 1
    inv = _json(as_company(a, "--json", "partners", "invite", "globex"))
    pid = inv["id"]
    assert inv["status"] == "pending" and inv["safety_code"]
    acc = _json(as_company(b, "--json", "partners", "accept", "acme"))  # by inviter slug
    assert acc["status"] == "active"
    # both sides compute the same code from their own key file and the partner's key
    code_a = _json(as_company(a, "--json", "partners", "show", pid))["safety_code"]
    code_b = _json(as_company(b, "--json", "partners", "show", "acme"))["safety_code"]
    assert code_a == code_b and len(code_a.split()) == 6
    human = as_company(a, "partners", "show", "globex")
    assert code_a in human.output and "Compare this code" in human.output

    wrong = as_company(a, "partners", "verify", pid, "00000 " * 6)
    assert wrong.exit_code == cli.EXIT_REJECTED and "differ" in wrong.output
    ok = as_company(a, "partners", "verify", pid, code_b.replace(" ", "-"))
    assert ok.exit_code == 0 and "Verified" in ok.output
    assert _json(as_company(a, "--json", "partners", "show", pid))["verification"] == "verified"

    # the partner rotates its key: A's stored verification no longer holds
    assert as_company(b, "init", "--force", "--register").exit_code == 0
    shown = _json(as_company(a, "--json", "partners", "show", pid))
    assert shown["verification"] == "changed" and shown["needs_resync"]
    assert "WARNING" in as_company(a, "partners", "show", pid).output

    listed = _json(as_company(a, "--json", "partners", "list"))
    assert [p["id"] for p in listed] == [pid]

    end = as_company(b, "partners", "end", "acme", "--yes")
    assert end.exit_code == 0 and "deleted" in end.output
    assert _json(as_company(a, "--json", "partners", "show", pid))["status"] == "ended"


def test_policy_commands(as_company, tenants):
    a, b = tenants.a, tenants.b
    for t in (a, b):
        as_company(t, "init", "--register")
    pid = _json(as_company(a, "--json", "partners", "invite", "globex"))["id"]
    as_company(b, "partners", "accept", pid)
    assert as_company(a, "populations", "create", "customers", "--kind", "customers").exit_code == 0

    shown = as_company(a, "policy", "show", "globex")
    assert (
        shown.exit_code == 0 and "policy v1" in shown.output and "reciprocal: true" in shown.output
    )
    co_sell = REPO / "policies" / "co-sell.yaml"
    diff = as_company(a, "policy", "diff", "globex", str(co_sell))
    assert diff.exit_code == 0 and diff.output.startswith("---")
    applied = _json(as_company(a, "--json", "policy", "apply", "globex", str(co_sell)))
    assert applied["version"] == 2
    assert as_company(a, "policy", "diff", "globex", str(co_sell)).output.strip() == "no change"

    theirs = as_company(b, "policy", "show", "acme", "--partner")
    assert theirs.exit_code == 0 and "customers" in theirs.output


def test_bad_policy_file_is_a_clear_error(as_company, tenants, tmp_path):
    for t in (tenants.a, tenants.b):
        as_company(t, "init", "--register")
    pid = _json(as_company(tenants.a, "--json", "partners", "invite", "globex"))["id"]
    bad = tmp_path / "bad.yaml"
    bad.write_text("version: 1\ndefault: everything\n")
    r = as_company(tenants.a, "policy", "apply", pid, str(bad))
    assert r.exit_code == cli.EXIT_USAGE and "bad.yaml" in r.output and "default" in r.output


def test_audit_and_populations(as_company, tenants):
    as_company(tenants.a, "populations", "create", "prospects", "--kind", "prospects")
    pops = _json(as_company(tenants.a, "--json", "populations", "list", role="reader"))
    assert [p["slug"] for p in pops] == ["prospects"]
    assert as_company(tenants.a, "populations", "delete", "prospects", "--yes").exit_code == 0
    events = _json(as_company(tenants.a, "--json", "audit", role="reader"))
    assert {"population.create", "population.delete"} <= {e["action"] for e in events}


def test_unknown_partner_slug(as_company, tenants):
    r = as_company(tenants.a, "partners", "show", "nobody")
    assert r.exit_code == cli.EXIT_NOT_FOUND and "no live partnership" in r.output
