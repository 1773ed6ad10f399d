"""The `blindmap` command line.

Exit codes (docs/cli.md): 0 ok · 1 unexpected error · 2 usage error or bad input file ·
3 authentication failed · 4 permission denied · 5 not found · 6 conflict or rejected
input · 7 escrow unreachable · 8 rate limited.
"""

from __future__ import annotations

import contextlib
import functools
import json
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, NoReturn, ParamSpec, TypeVar

import click
from pydantic import BaseModel
from rich.console import Console
from rich.table import Table

from blindmap import _errors, protocol
from blindmap._client import Client

EXIT_OK, EXIT_ERROR, EXIT_USAGE, EXIT_AUTH, EXIT_FORBIDDEN = 0, 1, 2, 3, 4
EXIT_NOT_FOUND, EXIT_REJECTED, EXIT_UNREACHABLE, EXIT_RATE_LIMITED = 5, 6, 7, 8

_EXIT_BY_ERROR: list[tuple[type[Exception], int]] = [
    (_errors.AuthenticationError, EXIT_AUTH),
    (_errors.PermissionDeniedError, EXIT_FORBIDDEN),
    (_errors.NotFoundError, EXIT_NOT_FOUND),
    (_errors.ConflictError, EXIT_REJECTED),
    (_errors.ValidationError, EXIT_REJECTED),
    (_errors.PayloadTooLargeError, EXIT_REJECTED),
    (_errors.BadRequestError, EXIT_REJECTED),
    (_errors.RateLimitError, EXIT_RATE_LIMITED),
    (_errors.APIConnectionError, EXIT_UNREACHABLE),
]

P = ParamSpec("P")
R = TypeVar("R")

err_console = Console(stderr=True)


class State:
    """Options shared by every sub-command."""

    def __init__(self, url: str | None, as_json: bool) -> None:
        self.url = url
        self.as_json = as_json
        self.console = Console()

    def client(self) -> Client:
        return Client(base_url=self.url)

    def emit(self, data: Any, human: Callable[[], None]) -> None:
        """Print `data` as JSON with --json, else call the human renderer."""
        if self.as_json:
            click.echo(json.dumps(_jsonable(data), indent=2, sort_keys=True))
        else:
            human()


def _jsonable(data: Any) -> Any:
    if isinstance(data, BaseModel):
        return data.model_dump(mode="json")
    if isinstance(data, list):
        return [_jsonable(x) for x in data]
    if isinstance(data, dict):
        return {k: _jsonable(v) for k, v in data.items()}
    return data


def fail(message: str, code: int = EXIT_ERROR) -> NoReturn:
    err_console.print(f"[bold red]error:[/] {message}", highlight=False, soft_wrap=True)
    sys.exit(code)


def handle_errors(fn: Callable[P, R]) -> Callable[P, R]:
    """Turn SDK exceptions into a one-paragraph message and a documented exit code."""

    @functools.wraps(fn)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return fn(*args, **kwargs)
        except _errors.BlindmapError as exc:
            code = next((c for t, c in _EXIT_BY_ERROR if isinstance(exc, t)), EXIT_ERROR)
            fail(str(exc), code)

    return wrapper


pass_state = click.make_pass_decorator(State)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--url", envvar="BLINDMAP_URL", help="Escrow base URL [env BLINDMAP_URL].")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable JSON output.")
@click.version_option(package_name="blindmap")
@click.pass_context
def main(ctx: click.Context, url: str | None, as_json: bool) -> None:
    """Blindmap: map accounts with partners without showing anyone your lists.

    The API key is read from BLINDMAP_API_KEY (never from the command line).
    """
    ctx.obj = State(url, as_json)


@main.command()
@pass_state
@handle_errors
def whoami(state: State) -> None:
    """Show the company and API key in use."""
    with state.client() as client:
        me = client.me()

    def human() -> None:
        state.console.print(
            f"[bold]{me.company.display_name}[/] ({me.company.slug}) — "
            f"key {me.api_key.prefix}… '{me.api_key.name}', role {me.api_key.role.value}",
            highlight=False,
        )

    state.emit(me, human)


@main.group()
def keys() -> None:
    """Manage your company's API keys (admin role)."""


def _keys_table(items: list[protocol.ApiKey]) -> Table:
    table = Table("id", "name", "role", "prefix", "created", "last used", "revoked")
    for k in items:
        table.add_row(
            str(k.id),
            k.name,
            k.role.value,
            k.prefix + "…",
            k.created_at.strftime("%Y-%m-%d %H:%M"),
            k.last_used_at.strftime("%Y-%m-%d %H:%M") if k.last_used_at else "never",
            k.revoked_at.strftime("%Y-%m-%d %H:%M") if k.revoked_at else "",
        )
    return table


@keys.command("create")
@click.option("--name", required=True, help="What the key is for, e.g. 'nightly sync'.")
@click.option(
    "--role",
    type=click.Choice([r.value for r in protocol.Role]),
    default=protocol.Role.reader.value,
    show_default=True,
)
@pass_state
@handle_errors
def keys_create(state: State, name: str, role: str) -> None:
    """Create a key. Its secret is printed once: store it now."""
    with state.client() as client:
        created = client.create_api_key(name=name, role=protocol.Role(role))

    def human() -> None:
        state.console.print(f"Created {created.role.value} key '{created.name}' ({created.id}).")
        state.console.print("Store it now; it is not shown again:", style="bold")
        click.echo(created.key)

    state.emit(created, human)


@keys.command("list")
@click.option("--all", "include_revoked", is_flag=True, help="Include revoked keys.")
@pass_state
@handle_errors
def keys_list(state: State, include_revoked: bool) -> None:
    """List your company's keys (never their secrets)."""
    with state.client() as client:
        items = client.list_api_keys(include_revoked=include_revoked)
    state.emit(items, lambda: state.console.print(_keys_table(items)))


@keys.command("revoke")
@click.argument("key_id")
@pass_state
@handle_errors
def keys_revoke(state: State, key_id: str) -> None:
    """Revoke a key by id; it stops working on the next request."""
    with state.client() as client:
        key = client.revoke_api_key(key_id)
    state.emit(key, lambda: state.console.print(f"Revoked key '{key.name}' ({key.id})."))


# ------------------------------------------------------------ company key pair
# `init` / `key show` work offline: they touch only the local key file (blindmap.keyfile).


def _key_file_option(fn: Callable[P, R]) -> Callable[P, R]:
    return click.option(
        "--key-file",
        type=click.Path(dir_okay=False, path_type=Path),
        default=None,
        help="Key file [env BLINDMAP_KEY_FILE; default $XDG_CONFIG_HOME/blindmap/key.pem].",
    )(fn)


def _ask_passphrase(*, confirm: bool) -> Callable[[], str]:
    """Passphrase from BLINDMAP_KEY_PASSPHRASE, else a hidden prompt (never an argument)."""

    def get() -> str:
        from blindmap import keyfile

        env = keyfile.passphrase_from_env()
        if env is not None:
            return env
        try:
            value: str = click.prompt(
                "Key file passphrase",
                hide_input=True,
                confirmation_prompt=confirm,
                err=True,
            )
        except click.Abort:
            fail(
                f"no passphrase given (set {keyfile.ENV_PASSPHRASE} to run unattended)", EXIT_USAGE
            )
        return value

    return get


@contextlib.contextmanager
def _key_file_errors() -> Iterator[None]:
    """Key-file problems are 'bad input file' (2); refusing to overwrite is a conflict (6)."""
    from blindmap import crypto, keyfile

    try:
        yield
    except keyfile.KeyFileExistsError as exc:
        fail(str(exc), EXIT_REJECTED)
    except (keyfile.KeyFileError, crypto.CryptoError) as exc:
        fail(str(exc), EXIT_USAGE)


def _show_key_info(state: State, title: str, info: Any) -> None:
    state.console.print(title, style="bold", highlight=False)
    state.console.print(f"  key file:    {info.path}", highlight=False)
    if info.mode is not None:
        state.console.print(f"  mode:        {info.mode:04o} (ok: readable by you only)")
    state.console.print(f"  encrypted:   {'yes' if info.encrypted else 'no'}")
    state.console.print(f"  fingerprint: {info.fingerprint}", highlight=False)
    state.console.print(f"  public key:  {info.public_key_text}", highlight=False)
    if info.backup is not None:
        state.console.print(f"  previous key kept as {info.backup}", highlight=False)


@main.command()
@_key_file_option
@click.option(
    "--passphrase/--no-passphrase",
    "use_passphrase",
    default=None,
    help="Encrypt the key file. Default: only when BLINDMAP_KEY_PASSPHRASE is set. "
    "The passphrase is read from that variable or prompted, never from an argument.",
)
@click.option("--force", is_flag=True, help="Replace an existing key file (kept as a backup).")
@pass_state
@handle_errors
def init(state: State, key_file: Path | None, use_passphrase: bool | None, force: bool) -> None:
    """Create your company's X25519 key pair in a 0600 key file.

    Prints the public key and its fingerprint; the private key never leaves the file.
    """
    from blindmap import keyfile

    if use_passphrase is None:
        passphrase: keyfile.Passphrase = keyfile.passphrase_from_env()
    elif use_passphrase:
        passphrase = _ask_passphrase(confirm=True)
    else:
        passphrase = None
    with _key_file_errors():
        info = keyfile.create_key_file(key_file, passphrase=passphrase, force=force)
    # Seam for `init --register` (later issue): upload `info.public_key` with
    # `state.client()` here; the escrow bumps key_epoch. Nothing is sent today.
    state.emit(info.as_dict(), lambda: _show_key_info(state, "Created your key pair.", info))


@main.group()
def key() -> None:
    """Your company's key pair (local key file; see also `blindmap init`)."""


@key.command("show")
@_key_file_option
@pass_state
@handle_errors
def key_show(state: State, key_file: Path | None) -> None:
    """Show the key file's path, mode check, fingerprint and public key."""
    from blindmap import keyfile

    with _key_file_errors():
        info = keyfile.inspect_key_file(key_file, passphrase=_ask_passphrase(confirm=False))
    state.emit(info.as_dict(), lambda: _show_key_info(state, "Your key pair.", info))


if __name__ == "__main__":  # pragma: no cover
    main()
