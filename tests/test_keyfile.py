"""The company key file: permissions, atomic creation, passphrases, clear errors."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519

from blindmap import crypto, keyfile

pytestmark = [
    pytest.mark.usefixtures("no_network"),
    pytest.mark.skipif(os.name != "posix", reason="POSIX permission bits"),
]


def mode(p: Path) -> int:
    return stat.S_IMODE(p.stat().st_mode)


@pytest.fixture
def key_dir(tmp_path: Path) -> Path:
    d = tmp_path / "cfg" / "blindmap"  # does not exist yet
    return d


def test_create_sets_modes_and_loads_back(key_dir: Path) -> None:
    path = key_dir / "key.pem"
    old = os.umask(0o022)
    try:
        info = keyfile.create_key_file(path)
    finally:
        os.umask(old)
    assert mode(path) == 0o600
    assert mode(key_dir) == 0o700
    assert info.path == path and info.mode == 0o600 and not info.encrypted
    assert info.backup is None
    assert path.read_bytes().startswith(b"-----BEGIN PRIVATE KEY-----")
    priv = keyfile.load_private_key(path)
    assert crypto.public_key_bytes(priv) == info.public_key
    assert keyfile.inspect_key_file(path).fingerprint == info.fingerprint
    # no temp files left behind
    assert sorted(p.name for p in key_dir.iterdir()) == ["key.pem"]


def test_exact_0600_even_with_permissive_umask(key_dir: Path) -> None:
    old = os.umask(0)
    try:
        keyfile.create_key_file(key_dir / "key.pem")
    finally:
        os.umask(old)
    assert mode(key_dir / "key.pem") == 0o600
    assert mode(key_dir) == 0o700


def test_created_with_o_excl_and_mode_never_chmod_after_write(
    key_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[tuple[int, int]] = []
    real_open = os.open

    def spy(path: str | os.PathLike[str], flags: int, mode: int = 0o777, **kw: object) -> int:
        calls.append((flags, mode))
        return real_open(path, flags, mode)  # type: ignore[arg-type]

    monkeypatch.setattr(os, "open", spy)
    monkeypatch.setattr(os, "chmod", lambda *a, **k: pytest.fail("chmod on a written file"))
    key_dir.mkdir(parents=True, mode=0o700)
    keyfile.create_key_file(key_dir / "key.pem")
    writes = [(f, m) for f, m in calls if f & os.O_WRONLY]
    assert writes and all(f & os.O_CREAT and f & os.O_EXCL and m == 0o600 for f, m in writes)


@pytest.mark.parametrize("bad", [0o644, 0o640, 0o604, 0o660, 0o602, 0o620])
def test_refuses_group_or_world_accessible(key_dir: Path, bad: int) -> None:
    path = key_dir / "key.pem"
    keyfile.create_key_file(path)
    path.chmod(bad)
    with pytest.raises(keyfile.KeyFilePermissionError) as exc:
        keyfile.load_private_key(path)
    assert f"chmod 600 {path}" in str(exc.value)
    assert f"{bad:04o}" in str(exc.value)


def test_owner_only_modes_accepted(key_dir: Path) -> None:
    path = key_dir / "key.pem"
    keyfile.create_key_file(path)
    path.chmod(0o400)
    keyfile.load_private_key(path)


def test_owner_execute_bit_is_not_a_leak(key_dir: Path) -> None:
    path = key_dir / "key.pem"
    keyfile.create_key_file(path)
    path.chmod(0o700)
    keyfile.load_private_key(path)


def test_refuses_writable_directory(tmp_path: Path) -> None:
    d = tmp_path / "shared"
    d.mkdir()
    d.chmod(0o777)
    with pytest.raises(keyfile.KeyFilePermissionError, match=f"chmod 700 {d}"):
        keyfile.create_key_file(d / "key.pem")
    assert not (d / "key.pem").exists()


def test_existing_directory_mode_kept(tmp_path: Path) -> None:
    d = tmp_path / "mine"
    d.mkdir(mode=0o755)
    d.chmod(0o755)
    keyfile.create_key_file(d / "key.pem")
    assert mode(d) == 0o755  # not ours to change; the file itself is 0600
    assert mode(d / "key.pem") == 0o600


def test_passphrase_round_trip(key_dir: Path) -> None:
    path = key_dir / "key.pem"
    info = keyfile.create_key_file(path, passphrase="correct horse")
    assert info.encrypted and keyfile.is_encrypted(path)
    data = path.read_bytes()
    assert data.startswith(b"-----BEGIN ENCRYPTED PRIVATE KEY-----")
    priv = keyfile.load_private_key(path, passphrase="correct horse")
    assert crypto.public_key_bytes(priv) == info.public_key
    # bytes and callables work too; the callable is only asked when needed
    assert keyfile.load_private_key(path, passphrase=b"correct horse")
    assert keyfile.load_private_key(path, passphrase=lambda: "correct horse")


def test_wrong_or_missing_passphrase(key_dir: Path) -> None:
    path = key_dir / "key.pem"
    keyfile.create_key_file(path, passphrase="correct horse")
    with pytest.raises(keyfile.PassphraseError, match="wrong passphrase"):
        keyfile.load_private_key(path, passphrase="battery staple")
    with pytest.raises(keyfile.PassphraseError, match="BLINDMAP_KEY_PASSPHRASE"):
        keyfile.load_private_key(path)


def test_passphrase_callable_not_called_for_plain_file(key_dir: Path) -> None:
    path = key_dir / "key.pem"
    keyfile.create_key_file(path)
    keyfile.load_private_key(path, passphrase=lambda: pytest.fail("asked for a passphrase"))
    # and a passphrase given for an unencrypted file is harmless
    keyfile.load_private_key(path, passphrase="unused")


def test_no_overwrite_without_force(key_dir: Path) -> None:
    path = key_dir / "key.pem"
    first = keyfile.create_key_file(path)
    before = path.read_bytes()
    with pytest.raises(keyfile.KeyFileExistsError, match="--force"):
        keyfile.create_key_file(path)
    assert path.read_bytes() == before
    second = keyfile.create_key_file(path, force=True)
    assert second.public_key != first.public_key
    assert second.backup is not None and second.backup.read_bytes() == before
    assert mode(second.backup) == 0o600
    assert crypto.public_key_bytes(keyfile.load_private_key(second.backup)) == first.public_key
    third = keyfile.create_key_file(path, force=True)
    assert third.backup is not None and third.backup != second.backup


def test_missing_file_hint(tmp_path: Path) -> None:
    with pytest.raises(keyfile.KeyFileNotFoundError, match="blindmap init"):
        keyfile.load_private_key(tmp_path / "nope.pem")


def _write_0600(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    os.write(fd, data)
    os.close(fd)


def test_not_an_x25519_key(tmp_path: Path) -> None:
    for name, priv in [
        ("ed", ed25519.Ed25519PrivateKey.generate()),
        ("ec", ec.generate_private_key(ec.SECP256R1())),
    ]:
        path = tmp_path / f"{name}.pem"
        _write_0600(
            path,
            priv.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            ),
        )
        with pytest.raises(keyfile.KeyFileError, match="not an X25519 key"):
            keyfile.load_private_key(path)


def test_garbage_and_directory(tmp_path: Path) -> None:
    path = tmp_path / "junk.pem"
    _write_0600(path, b"hello")
    with pytest.raises(keyfile.KeyFileError, match="not a Blindmap key file"):
        keyfile.load_private_key(path)
    path2 = tmp_path / "broken.pem"
    _write_0600(path2, b"-----BEGIN PRIVATE KEY-----\nnope\n-----END PRIVATE KEY-----\n")
    with pytest.raises(keyfile.KeyFileError, match="not a readable PEM"):
        keyfile.load_private_key(path2)
    d = tmp_path / "dir.pem"
    d.mkdir(mode=0o700)
    with pytest.raises(keyfile.KeyFileError):
        keyfile.load_private_key(d)


def test_errors_never_contain_key_material(key_dir: Path) -> None:
    path = key_dir / "key.pem"
    keyfile.create_key_file(path, passphrase="pw")
    pem = path.read_text()
    body = "".join(pem.splitlines()[1:-1])
    path.chmod(0o644)
    for call in (
        lambda: keyfile.load_private_key(path, passphrase="pw"),
        lambda: keyfile.load_private_key(path, passphrase="bad"),
    ):
        with pytest.raises(keyfile.KeyFileError) as exc:
            call()
        assert body[:20] not in str(exc.value)
    path.chmod(0o600)
    with pytest.raises(keyfile.PassphraseError) as exc2:
        keyfile.load_private_key(path, passphrase="bad")
    assert body[:20] not in str(exc2.value) and "bad" not in str(exc2.value).split()


def test_default_path(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("BLINDMAP_KEY_FILE", raising=False)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg"))
    assert keyfile.default_key_path() == tmp_path / "xdg" / "blindmap" / "key.pem"
    monkeypatch.setenv("XDG_CONFIG_HOME", "relative/ignored")  # spec: must be absolute
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert keyfile.default_key_path() == tmp_path / "home" / ".config" / "blindmap" / "key.pem"
    monkeypatch.setenv("BLINDMAP_KEY_FILE", str(tmp_path / "explicit.pem"))
    assert keyfile.default_key_path() == tmp_path / "explicit.pem"
    # create/load use it when no path is given
    info = keyfile.create_key_file()
    assert info.path == tmp_path / "explicit.pem"
    assert crypto.public_key_bytes(keyfile.load_private_key()) == info.public_key


def test_passphrase_from_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("BLINDMAP_KEY_PASSPHRASE", raising=False)
    assert keyfile.passphrase_from_env() is None
    monkeypatch.setenv("BLINDMAP_KEY_PASSPHRASE", "")
    assert keyfile.passphrase_from_env() is None
    monkeypatch.setenv("BLINDMAP_KEY_PASSPHRASE", "s3cret")
    assert keyfile.passphrase_from_env() == "s3cret"


def test_info_dict_has_no_private_material(key_dir: Path) -> None:
    info = keyfile.create_key_file(key_dir / "key.pem")
    d = info.as_dict()
    assert set(d) == {"path", "public_key", "fingerprint", "encrypted", "mode", "backup"}
    assert d["mode"] == "0600"
    priv = keyfile.load_private_key(key_dir / "key.pem")
    assert crypto.private_key_bytes(priv).hex() not in repr(info) + repr(d)


def test_public_all() -> None:
    for name in keyfile.__all__:
        assert hasattr(keyfile, name), name
