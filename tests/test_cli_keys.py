"""`blindmap init` and `blindmap key show` through click's CliRunner (offline)."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from blindmap import crypto, keyfile
from blindmap.cli import EXIT_REJECTED, EXIT_USAGE, main

pytestmark = [
    pytest.mark.usefixtures("no_network"),
    pytest.mark.skipif(os.name != "posix", reason="POSIX permission bits"),
]


@pytest.fixture
def key_path(tmp_path: Path) -> Path:
    return tmp_path / "cfg" / "blindmap" / "key.pem"


@pytest.fixture
def run(monkeypatch: pytest.MonkeyPatch, key_path: Path):  # type: ignore[no-untyped-def]
    for var in ("BLINDMAP_KEY_PASSPHRASE", "BLINDMAP_URL", "BLINDMAP_API_KEY"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("BLINDMAP_KEY_FILE", str(key_path))

    def invoke(*args: str, input: str | None = None, env: dict[str, str] | None = None) -> Result:
        return CliRunner().invoke(main, list(args), input=input, env=env)

    return invoke


def _private_hex(path: Path, passphrase: str | None = None) -> str:
    return crypto.private_key_bytes(keyfile.load_private_key(path, passphrase=passphrase)).hex()


def test_init_json_then_show(run, key_path: Path) -> None:  # type: ignore[no-untyped-def]
    res = run("--json", "init")
    assert res.exit_code == 0, res.output
    data = json.loads(res.stdout)
    assert data["path"] == str(key_path)
    assert data["mode"] == "0600" and data["encrypted"] is False and data["backup"] is None
    pub = crypto.decode_public_key(data["public_key"])
    assert data["fingerprint"] == crypto.fingerprint(pub)
    assert stat.S_IMODE(key_path.stat().st_mode) == 0o600
    assert stat.S_IMODE(key_path.parent.stat().st_mode) == 0o700

    shown = run("--json", "key", "show")
    assert shown.exit_code == 0, shown.output
    assert json.loads(shown.stdout) == data
    secret = _private_hex(key_path)
    assert secret not in res.output + shown.output
    assert "PRIVATE KEY" not in res.output + shown.output


def test_init_human_output(run, key_path: Path) -> None:  # type: ignore[no-untyped-def]
    res = run("init", "--key-file", str(key_path.with_name("other.pem")))
    assert res.exit_code == 0, res.output
    info = keyfile.inspect_key_file(key_path.with_name("other.pem"))
    assert info.fingerprint in res.output
    assert info.public_key_text in res.output
    assert str(key_path.with_name("other.pem")) in res.output
    assert not key_path.exists()  # --key-file wins over the environment
    shown = run("key", "show", "--key-file", str(key_path.with_name("other.pem")))
    assert shown.exit_code == 0
    assert "0600" in shown.output and info.fingerprint in shown.output


def test_init_refuses_overwrite_then_force_keeps_backup(run, key_path: Path) -> None:  # type: ignore[no-untyped-def]
    first = json.loads(run("--json", "init").stdout)
    res = run("init")
    assert res.exit_code == EXIT_REJECTED
    assert "--force" in res.output and "already exists" in res.output
    assert json.loads(run("--json", "key", "show").stdout)["public_key"] == first["public_key"]
    forced = run("--json", "init", "--force")
    assert forced.exit_code == 0, forced.output
    second = json.loads(forced.stdout)
    assert second["public_key"] != first["public_key"]
    backup = Path(second["backup"])
    assert keyfile.inspect_key_file(backup).public_key_text == first["public_key"]


def test_init_passphrase_prompt(run, key_path: Path) -> None:  # type: ignore[no-untyped-def]
    res = run("--json", "init", "--passphrase", input="hunter2hunter2\nhunter2hunter2\n")
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["encrypted"] is True
    assert "hunter2" not in res.output  # hidden input is not echoed
    assert keyfile.is_encrypted(key_path)
    _private_hex(key_path, "hunter2hunter2")

    # key show prompts for it, or reads the environment
    shown = run("--json", "key", "show", input="hunter2hunter2\n")
    assert shown.exit_code == 0, shown.output
    assert json.loads(shown.stdout)["encrypted"] is True
    shown_env = run("key", "show", env={"BLINDMAP_KEY_PASSPHRASE": "hunter2hunter2"})
    assert shown_env.exit_code == 0, shown_env.output
    wrong = run("key", "show", env={"BLINDMAP_KEY_PASSPHRASE": "nope"})
    assert wrong.exit_code == EXIT_USAGE
    assert "wrong passphrase" in wrong.output


def test_init_passphrase_mismatch_then_env(run, key_path: Path) -> None:  # type: ignore[no-untyped-def]
    res = run("init", "--passphrase", input="aaaa\nbbbb\n")  # click re-asks, then input ends
    assert res.exit_code != 0
    assert not key_path.exists()
    ok = run("--json", "init", env={"BLINDMAP_KEY_PASSPHRASE": "from-env"})
    assert ok.exit_code == 0, ok.output
    assert json.loads(ok.stdout)["encrypted"] is True
    _private_hex(key_path, "from-env")


def test_init_no_passphrase_ignores_env(run, key_path: Path) -> None:  # type: ignore[no-untyped-def]
    res = run("--json", "init", "--no-passphrase", env={"BLINDMAP_KEY_PASSPHRASE": "ignored"})
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["encrypted"] is False


def test_show_refuses_open_permissions(run, key_path: Path) -> None:  # type: ignore[no-untyped-def]
    assert run("init").exit_code == 0
    key_path.chmod(0o644)
    res = run("key", "show")
    assert res.exit_code == EXIT_USAGE
    assert f"chmod 600 {key_path}" in " ".join(res.output.split())


def test_show_missing_file_hint(run, key_path: Path) -> None:  # type: ignore[no-untyped-def]
    res = run("key", "show")
    assert res.exit_code == EXIT_USAGE
    assert "blindmap init" in res.output


def test_no_key_material_options() -> None:
    """Neither command accepts a passphrase or key as an argument value."""
    for cmd in (main.commands["init"], main.commands["key"].commands["show"]):  # type: ignore[attr-defined]
        for param in cmd.params:
            names = " ".join(getattr(param, "opts", []))
            if "passphrase" in names:
                assert param.is_flag  # type: ignore[attr-defined]
            assert "private" not in names and "secret" not in names
