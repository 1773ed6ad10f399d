"""The `blindmap` CLI against the real app in-process: output, --json, exit codes."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

import blindmap
from blindmap import cli


@pytest.fixture
def run(client, monkeypatch):
    def invoke(key: str | None, *args: str):
        env = {"BLINDMAP_API_KEY": key} if key else {}
        if key is None:
            monkeypatch.delenv("BLINDMAP_API_KEY", raising=False)
        monkeypatch.setattr(
            cli.State,
            "client",
            lambda self: blindmap.Client(base_url="http://testserver", http_client=client),
        )
        return CliRunner().invoke(cli.main, list(args), env=env, catch_exceptions=False)

    return invoke


def test_whoami_human_and_json(run, tenants):
    r = run(tenants.a.keys["reader"], "whoami")
    assert r.exit_code == 0 and "Acme Analytics" in r.output and "reader" in r.output
    r = run(tenants.b.keys["admin"], "--json", "whoami")
    assert r.exit_code == 0
    assert json.loads(r.output)["company"]["slug"] == "globex"


def test_keys_create_list_revoke(run, tenants):
    r = run(
        tenants.a.keys["admin"], "--json", "keys", "create", "--name", "rep", "--role", "reader"
    )
    assert r.exit_code == 0, r.output
    created = json.loads(r.output)
    r = run(tenants.a.keys["admin"], "keys", "list")
    assert r.exit_code == 0 and "rep" in r.output and created["key"] not in r.output
    r = run(tenants.a.keys["admin"], "keys", "revoke", created["id"])
    assert r.exit_code == 0 and "Revoked" in r.output
    listed = json.loads(run(tenants.a.keys["admin"], "--json", "keys", "list").output)
    assert created["id"] not in {k["id"] for k in listed}


def test_exit_codes(run, tenants):
    assert run(tenants.a.keys["reader"], "keys", "list").exit_code == cli.EXIT_FORBIDDEN
    assert run("bmk_" + "x" * 38, "whoami").exit_code == cli.EXIT_AUTH
    r = run(tenants.b.keys["admin"], "keys", "revoke", str(tenants.a.key_ids["reader"]))
    assert r.exit_code == cli.EXIT_NOT_FOUND and "404" in r.output
    assert (
        run(tenants.a.keys["admin"], "keys", "create", "--name", "x", "--role", "boss").exit_code
        == cli.EXIT_USAGE
    )


def test_missing_api_key_is_a_clear_error(run):
    r = run(None, "whoami")
    assert r.exit_code == cli.EXIT_ERROR and "BLINDMAP_API_KEY" in r.output


def test_unreachable_escrow(monkeypatch):
    monkeypatch.setenv("BLINDMAP_API_KEY", "bmk_" + "x" * 38)
    monkeypatch.setattr(blindmap.Client, "_sleep", lambda self, s: None)
    r = CliRunner().invoke(cli.main, ["--url", "http://127.0.0.1:9", "whoami"])
    assert r.exit_code == cli.EXIT_UNREACHABLE and "cannot reach" in r.output
