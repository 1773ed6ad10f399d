"""The `blindmap` command line.

Exit codes (docs/cli.md): 0 ok · 1 unexpected error · 2 usage error or bad input file ·
3 authentication failed · 4 permission denied · 5 not found · 6 conflict or rejected
input · 7 escrow unreachable · 8 rate limited.
"""

from __future__ import annotations

import functools
import json
import sys
from collections.abc import Callable
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


if __name__ == "__main__":  # pragma: no cover
    main()
