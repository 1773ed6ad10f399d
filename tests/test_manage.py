"""`blindmap-server` operator commands."""

from __future__ import annotations

import json

from click.testing import CliRunner

from service import auth
from service.manage import main


def test_create_company_prints_admin_key_once(tmp_path, monkeypatch):
    monkeypatch.setenv("BLINDMAP_DATABASE_URL", f"sqlite:///{tmp_path / 'e.db'}")
    monkeypatch.setenv("BLINDMAP_ENV", "dev")
    r = CliRunner().invoke(main, ["create-company", "initech", "--name", "Initech", "--json"])
    assert r.exit_code == 0, r.output
    out = json.loads(r.output)
    assert out["slug"] == "initech" and auth.well_formed(out["admin_key"])
    again = CliRunner().invoke(main, ["create-company", "initech", "--name", "Initech"])
    assert again.exit_code == 1 and "already exists" in again.output


def test_create_company_rejects_bad_slug(tmp_path, monkeypatch):
    monkeypatch.setenv("BLINDMAP_DATABASE_URL", f"sqlite:///{tmp_path / 'e.db'}")
    r = CliRunner().invoke(main, ["create-company", "Bad Slug!", "--name", "x"])
    assert r.exit_code == 2 and "SLUG" in r.output


def test_invalid_configuration_is_reported(monkeypatch):
    monkeypatch.setenv("BLINDMAP_ENV", "prod")
    monkeypatch.delenv("BLINDMAP_SECRET_KEY", raising=False)
    r = CliRunner().invoke(main, ["migrate"])
    assert r.exit_code == 1 and "BLINDMAP_SECRET_KEY is required" in r.output
