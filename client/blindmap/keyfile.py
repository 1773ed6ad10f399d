"""The company key file: an X25519 private key as PKCS#8 PEM, mode 0600 (docs/protocol.md).

Rules, like ssh: the file is created 0600 atomically (never written then chmod-ed), its
directory 0700 when we create it; a group/world-accessible key file is refused with the
exact `chmod` fix. The passphrase comes from `BLINDMAP_KEY_PASSPHRASE` or a prompt the
caller supplies, never from a command-line argument.
"""

from __future__ import annotations

import contextlib
import os
import stat
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from blindmap import crypto
from blindmap._errors import BlindmapError

__all__ = [
    "ENV_KEY_FILE",
    "ENV_PASSPHRASE",
    "KeyFileError",
    "KeyFileExistsError",
    "KeyFileInfo",
    "KeyFileNotFoundError",
    "KeyFilePermissionError",
    "PassphraseError",
    "create_key_file",
    "default_key_path",
    "file_mode",
    "inspect_key_file",
    "is_encrypted",
    "load_private_key",
    "passphrase_from_env",
]

ENV_KEY_FILE = "BLINDMAP_KEY_FILE"
ENV_PASSPHRASE = "BLINDMAP_KEY_PASSPHRASE"  # noqa: S105 - a variable name, not a secret

_ENCRYPTED_HEADER = b"-----BEGIN ENCRYPTED PRIVATE KEY-----"
_PLAIN_HEADER = b"-----BEGIN PRIVATE KEY-----"
_MAX_SIZE = 64 * 1024  # a PEM X25519 key is ~250 bytes; refuse to slurp anything huge
# POSIX permission bits mean nothing on Windows; there the user profile ACLs protect it.
_POSIX = os.name == "posix"

Passphrase = str | bytes | Callable[[], str | bytes] | None


class KeyFileError(BlindmapError):
    """The key file is missing, unsafe, unreadable or not an X25519 key."""


class KeyFileNotFoundError(KeyFileError):
    pass


class KeyFileExistsError(KeyFileError):
    pass


class KeyFilePermissionError(KeyFileError):
    """Group/world-accessible key file or writable-by-others directory."""


class PassphraseError(KeyFileError):
    """Missing or wrong passphrase for an encrypted key file."""


@dataclass(frozen=True)
class KeyFileInfo:
    """What is safe to show about a key file (no private material)."""

    path: Path
    public_key: bytes
    encrypted: bool
    mode: int | None  # permission bits, None where POSIX modes do not apply
    backup: Path | None = None

    @property
    def fingerprint(self) -> str:
        return crypto.fingerprint(self.public_key)

    @property
    def public_key_text(self) -> str:
        return crypto.encode_public_key(self.public_key)

    def as_dict(self) -> dict[str, object]:
        return {
            "path": str(self.path),
            "public_key": self.public_key_text,
            "fingerprint": self.fingerprint,
            "encrypted": self.encrypted,
            "mode": None if self.mode is None else f"{self.mode:04o}",
            "backup": None if self.backup is None else str(self.backup),
        }


def default_key_path() -> Path:
    """`$BLINDMAP_KEY_FILE`, else `$XDG_CONFIG_HOME/blindmap/key.pem` (~/.config default)."""
    env = os.environ.get(ENV_KEY_FILE)
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CONFIG_HOME")
    base = Path(xdg).expanduser() if xdg and Path(xdg).is_absolute() else Path.home() / ".config"
    return base / "blindmap" / "key.pem"


def passphrase_from_env() -> str | None:
    """`$BLINDMAP_KEY_PASSPHRASE` when set and non-empty."""
    return os.environ.get(ENV_PASSPHRASE) or None


def file_mode(path: str | os.PathLike[str]) -> int | None:
    """Permission bits of `path` (following symlinks), None on non-POSIX systems."""
    return stat.S_IMODE(os.stat(path).st_mode) if _POSIX else None


def _chmod_hint(path: Path, mode: int) -> str:
    return (
        f"key file {path} is accessible by group/others (mode {mode:04o}); "
        f"it must be readable by you only. Fix it with: chmod 600 {path}"
    )


def _as_bytes(passphrase: Passphrase) -> bytes | None:
    value = passphrase() if callable(passphrase) else passphrase
    if value is None or value in ("", b""):
        return None
    return value.encode("utf-8") if isinstance(value, str) else bytes(value)


def _fsync_dir(directory: Path) -> None:
    if not _POSIX:  # pragma: no cover
        return
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _prepare_dir(directory: Path) -> None:
    if not directory.exists():
        # makedirs applies `mode` to the leaf only (and umask may narrow it): chmod it
        # right away, before anything is written inside.
        os.makedirs(directory, mode=0o700, exist_ok=True)
        if _POSIX:
            os.chmod(directory, 0o700)
        return
    if not directory.is_dir():
        raise KeyFileError(f"{directory} exists and is not a directory")
    if _POSIX:
        mode = stat.S_IMODE(os.stat(directory).st_mode)
        if mode & 0o022:
            # Others could replace our key file with theirs: refuse, like ssh.
            raise KeyFilePermissionError(
                f"directory {directory} is writable by group/others (mode {mode:04o}); "
                f"use a private directory or fix it with: chmod 700 {directory}"
            )


def _write_new(path: Path, data: bytes) -> None:
    """Create `path` 0600 with O_CREAT|O_EXCL and write `data`; remove it on failure."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0)
    fd = os.open(path, flags, 0o600)
    try:
        if _POSIX:
            os.fchmod(fd, 0o600)  # exact bits whatever the umask; file is still empty
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        with contextlib.suppress(OSError):
            os.unlink(path)
        raise
    os.close(fd)


def create_key_file(
    path: str | os.PathLike[str] | None = None,
    *,
    passphrase: Passphrase = None,
    force: bool = False,
    private_key: X25519PrivateKey | None = None,
) -> KeyFileInfo:
    """Generate (or store `private_key`) into a new 0600 key file; returns public info.

    An existing file is never overwritten unless `force`; then it is first kept as
    `<name>.bak-<UTC timestamp>` (also 0600): the old key may still be registered and be
    the only way to read data self-sealed with it.
    """
    target = Path(path).expanduser() if path is not None else default_key_path()
    _prepare_dir(target.parent)
    exists = os.path.lexists(target)
    if exists and not force:
        raise KeyFileExistsError(
            f"key file {target} already exists; refusing to overwrite it "
            "(use --force to replace it; the old file is kept as a backup)"
        )
    priv = private_key if private_key is not None else crypto.generate_private_key()
    secret = _as_bytes(passphrase)
    encryption: serialization.KeySerializationEncryption = (
        serialization.BestAvailableEncryption(secret) if secret else serialization.NoEncryption()
    )
    pem = priv.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption
    )
    # Write a temp file in the same directory, then move it into place atomically so a
    # crash never leaves a truncated key file.
    tmp = target.with_name(f".{target.name}.tmp-{os.getpid()}-{time.monotonic_ns()}")
    _write_new(tmp, pem)
    backup: Path | None = None
    try:
        if exists:
            stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
            backup = target.with_name(f"{target.name}.bak-{stamp}")
            n = 1
            while os.path.lexists(backup):
                backup = target.with_name(f"{target.name}.bak-{stamp}-{n}")
                n += 1
            os.link(target, backup)  # the old key stays under both names until replaced
            os.replace(tmp, target)
        else:
            os.link(tmp, target)  # fails if `target` appeared meanwhile: no overwrite
            os.unlink(tmp)
    except FileExistsError:
        raise KeyFileExistsError(
            f"key file {target} was created by something else meanwhile; not overwritten"
        ) from None
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
    _fsync_dir(target.parent)
    return KeyFileInfo(
        path=target,
        public_key=crypto.public_key_bytes(priv),
        encrypted=secret is not None,
        mode=file_mode(target),
        backup=backup,
    )


def _read_checked(path: Path) -> tuple[bytes, int | None]:
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        raise KeyFileNotFoundError(
            f"no key file at {path}; create one with `blindmap init` "
            f"(or point {ENV_KEY_FILE} / --key-file at yours)"
        ) from None
    except PermissionError:
        raise KeyFileError(f"cannot read key file {path}: permission denied") from None
    except IsADirectoryError:  # pragma: no cover - Windows raises this at open
        raise KeyFileError(f"{path} is a directory, not a key file") from None
    try:
        st = os.fstat(fd)  # check the file we actually opened, not the path again
        if not stat.S_ISREG(st.st_mode):
            raise KeyFileError(f"{path} is not a regular file")
        mode = stat.S_IMODE(st.st_mode) if _POSIX else None
        if mode is not None and mode & 0o077:
            raise KeyFilePermissionError(_chmod_hint(path, mode))
        if st.st_size > _MAX_SIZE:
            raise KeyFileError(f"{path} is too large to be a Blindmap key file")
        chunks = []
        while chunk := os.read(fd, _MAX_SIZE):
            chunks.append(chunk)
        return b"".join(chunks), mode
    finally:
        os.close(fd)


def is_encrypted(path: str | os.PathLike[str]) -> bool:
    """Whether the key file is passphrase-protected (checks permissions too)."""
    data, _ = _read_checked(Path(path).expanduser())
    return data.lstrip().startswith(_ENCRYPTED_HEADER)


def _load(path: Path, passphrase: Passphrase) -> tuple[X25519PrivateKey, bool, int | None]:
    data, mode = _read_checked(path)
    head = data.lstrip()
    encrypted = head.startswith(_ENCRYPTED_HEADER)
    if not encrypted and not head.startswith(_PLAIN_HEADER):
        raise KeyFileError(
            f"{path} is not a Blindmap key file (expected a PKCS#8 PEM X25519 private key)"
        )
    secret: bytes | None = None
    if encrypted:
        secret = _as_bytes(passphrase)
        if secret is None:
            raise PassphraseError(
                f"key file {path} is passphrase-protected: set {ENV_PASSPHRASE} "
                "or run interactively to be prompted"
            )
    try:
        key = serialization.load_pem_private_key(data, password=secret)
    except ValueError as exc:
        if encrypted and "password" in str(exc).lower():
            raise PassphraseError(f"wrong passphrase for key file {path}") from None
        raise KeyFileError(f"{path} is not a readable PEM private key") from None
    except (TypeError, UnsupportedAlgorithm):
        raise KeyFileError(f"{path} is not a readable PEM private key") from None
    if not isinstance(key, X25519PrivateKey):
        raise KeyFileError(
            f"{path} holds a {type(key).__name__.lstrip('_')} key, not an X25519 key; "
            "create a Blindmap key with `blindmap init`"
        )
    return key, encrypted, mode


def load_private_key(
    path: str | os.PathLike[str] | None = None, *, passphrase: Passphrase = None
) -> X25519PrivateKey:
    """Load the X25519 private key; `passphrase` may be a callable (asked only if needed)."""
    target = Path(path).expanduser() if path is not None else default_key_path()
    return _load(target, passphrase)[0]


def inspect_key_file(
    path: str | os.PathLike[str] | None = None, *, passphrase: Passphrase = None
) -> KeyFileInfo:
    """Public facts about a key file (decrypts it to derive the public key)."""
    target = Path(path).expanduser() if path is not None else default_key_path()
    key, encrypted, mode = _load(target, passphrase)
    return KeyFileInfo(
        path=target, public_key=crypto.public_key_bytes(key), encrypted=encrypted, mode=mode
    )
