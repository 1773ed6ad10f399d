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
import uuid
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
    state.console.print(f"  key file:    {info.path}", highlight=False, soft_wrap=True)
    if info.mode is not None:
        state.console.print(f"  mode:        {info.mode:04o} (ok: readable by you only)")
    state.console.print(f"  encrypted:   {'yes' if info.encrypted else 'no'}")
    state.console.print(f"  fingerprint: {info.fingerprint}", highlight=False)
    state.console.print(f"  public key:  {info.public_key_text}", highlight=False)
    if info.backup is not None:
        state.console.print(
            f"  previous key kept as {info.backup}", highlight=False, soft_wrap=True
        )


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
@click.option(
    "--register", is_flag=True, help="Also register the public key with the escrow (admin key)."
)
@pass_state
@handle_errors
def init(
    state: State, key_file: Path | None, use_passphrase: bool | None, force: bool, register: bool
) -> None:
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
    data = info.as_dict()
    if register:
        registered = _register(state, info.public_key)
        data["key_epoch"] = registered.key_epoch
    state.emit(data, lambda: _show_key_info(state, "Created your key pair.", info))
    if register and not state.as_json:
        state.console.print(
            f"  registered with the escrow as {registered.slug}'s key "
            f"(epoch {registered.key_epoch})"
        )


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


def _register(state: State, public_key: bytes) -> protocol.CompanyKey:
    with state.client() as client:
        return client.register_public_key(public_key)


@key.command("register")
@_key_file_option
@pass_state
@handle_errors
def key_register(state: State, key_file: Path | None) -> None:
    """Register the key file's public key with the escrow (a new key bumps key_epoch).

    After a rotation every partnership needs a re-sync: tokens are derived from both keys.
    """
    from blindmap import keyfile

    with _key_file_errors():
        info = keyfile.inspect_key_file(key_file, passphrase=_ask_passphrase(confirm=False))
    registered = _register(state, info.public_key)
    state.emit(
        registered,
        lambda: state.console.print(
            f"Registered {info.fingerprint} as {registered.slug}'s key "
            f"(epoch {registered.key_epoch}).",
            highlight=False,
        ),
    )


# -- populations -----------------------------------------------------------------------------
@main.group()
def populations() -> None:
    """Your company's populations (named lists: customers, opportunities, ...)."""


@populations.command("list")
@pass_state
@handle_errors
def populations_list(state: State) -> None:
    """List my populations."""
    with state.client() as client:
        items = client.list_populations()

    def human() -> None:
        table = Table("slug", "name", "kind", "created")
        for p in items:
            table.add_row(p.slug, p.display_name, p.kind.value, f"{p.created_at:%Y-%m-%d}")
        state.console.print(table)

    state.emit(items, human)


@populations.command("create")
@click.argument("slug")
@click.option(
    "--kind", type=click.Choice([k.value for k in protocol.PopulationKind]), required=True
)
@click.option("--name", "display_name", help="Display name (default: from the slug).")
@pass_state
@handle_errors
def populations_create(state: State, slug: str, kind: str, display_name: str | None) -> None:
    """Create a population."""
    with state.client() as client:
        pop = client.create_population(slug, kind=kind, display_name=display_name)
    state.emit(
        pop, lambda: state.console.print(f"Created population '{pop.slug}' ({pop.kind.value}).")
    )


@populations.command("delete")
@click.argument("slug")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@pass_state
@handle_errors
def populations_delete(state: State, slug: str, yes: bool) -> None:
    """Delete a population and its uploads in every partnership."""
    if not yes:
        click.confirm(
            f"Delete population '{slug}' and its uploads in every partnership?", abort=True
        )
    with state.client() as client:
        client.delete_population(slug)
    state.emit({"deleted": slug}, lambda: state.console.print(f"Deleted population '{slug}'."))


# -- partnerships ----------------------------------------------------------------------------
@main.group()
def partners() -> None:
    """Partnerships: invite, accept, show (with the safety code), verify, end."""


def _resolve(client: Client, ref: str) -> protocol.Partnership:
    """A partnership by id, or by the partner's slug among my live partnerships."""
    try:
        uuid.UUID(ref)
    except ValueError:
        live = [
            p
            for p in client.list_partnerships()
            if p.partner.slug == ref and p.status is not protocol.PartnershipStatus.ended
        ]
        if not live:
            fail(f"no live partnership with '{ref}' (see `blindmap partners list`)", EXIT_NOT_FOUND)
        return live[0]
    return client.get_partnership(ref)


def _my_public_key(key_file: Path | None) -> bytes | None:
    from blindmap import keyfile

    try:
        return keyfile.inspect_key_file(
            key_file, passphrase=_ask_passphrase(confirm=False)
        ).public_key
    except keyfile.KeyFileNotFoundError:
        return None


def _safety(p: protocol.Partnership, key_file: Path | None) -> tuple[str | None, str]:
    """(safety code, note). The code uses MY key from my key file, never the escrow's
    copy of it: that is what exposes a substituted key."""
    from blindmap import crypto

    if p.partner.public_key is None:
        return None, f"{p.partner.slug} has not registered a public key yet"
    mine = _my_public_key(key_file)
    if mine is None:
        return None, "no local key file: run `blindmap init --register`"
    if p.me.public_key and crypto.decode_public_key(p.me.public_key) != mine:
        return (
            None,
            "your key file differs from the key the escrow holds for you: "
            "run `blindmap key register`",
        )
    return crypto.safety_code(p.id, mine, crypto.decode_public_key(p.partner.public_key)), ""


def _show_partnership(
    state: State, p: protocol.Partnership, key_file: Path | None
) -> dict[str, Any]:
    from blindmap import _trust

    code, note = _safety(p, key_file)
    trust = _trust.status(str(p.id), p.partner.public_key, key_file)
    data = {**p.model_dump(mode="json"), "safety_code": code, "verification": trust}
    if state.as_json:
        return data
    c = state.console
    c.print(
        f"[bold]Partnership {p.id}[/] with [bold]{p.partner.display_name}[/] ({p.partner.slug})",
        highlight=False,
    )
    c.print(f"  status: {p.status.value} (you are the {p.my_role})")
    if p.needs_resync:
        c.print("  [yellow]a key was rotated since acceptance: both sides must re-sync[/]")
    if code:
        c.print(f"  safety code: [bold]{code}[/]")
        if trust == "verified":
            c.print("  [green]verified[/]: matches the code you compared with your partner")
        elif trust == "changed":
            c.print(
                "  [bold red]WARNING: your partner's key changed since you verified it.[/] "
                "Compare the new code out of band before syncing."
            )
        else:
            c.print(
                "  Compare this code with your partner by phone or in person; if it matches, run "
                f"`blindmap partners verify {p.id} '<code>'`."
            )
    else:
        c.print(f"  safety code: not yet available ({note})")
    return data


@partners.command("invite")
@click.argument("partner_slug")
@_key_file_option
@pass_state
@handle_errors
def partners_invite(state: State, partner_slug: str, key_file: Path | None) -> None:
    """Invite a company (by slug) to a partnership."""
    with state.client() as client:
        p = client.invite_partner(partner_slug)
    data = _show_partnership(state, p, key_file)
    state.emit(
        data, lambda: state.console.print(f"Invitation sent; {partner_slug} must accept it.")
    )


@partners.command("accept")
@click.argument("partnership")
@_key_file_option
@pass_state
@handle_errors
def partners_accept(state: State, partnership: str, key_file: Path | None) -> None:
    """Accept an invitation (by id or inviter slug)."""
    with state.client() as client:
        p = client.accept_partnership(_resolve(client, partnership).id)
    data = _show_partnership(state, p, key_file)
    state.emit(data, lambda: state.console.print("Accepted."))


@partners.command("list")
@click.option("--status", type=click.Choice([s.value for s in protocol.PartnershipStatus]))
@pass_state
@handle_errors
def partners_list(state: State, status: str | None) -> None:
    """List my partnerships."""
    with state.client() as client:
        items = client.list_partnerships(status=status)

    def human() -> None:
        table = Table("id", "partner", "status", "role", "since", "re-sync")
        for p in items:
            table.add_row(
                str(p.id),
                p.partner.slug,
                p.status.value,
                p.my_role,
                f"{(p.accepted_at or p.created_at):%Y-%m-%d}",
                "yes" if p.needs_resync else "",
            )
        state.console.print(table)

    state.emit(items, human)


@partners.command("show")
@click.argument("partnership")
@_key_file_option
@pass_state
@handle_errors
def partners_show(state: State, partnership: str, key_file: Path | None) -> None:
    """Show a partnership with its safety code (by id or partner slug)."""
    with state.client() as client:
        p = _resolve(client, partnership)
    data = _show_partnership(state, p, key_file)
    state.emit(data, lambda: None)


@partners.command("verify")
@click.argument("partnership")
@click.argument("code")
@_key_file_option
@pass_state
@handle_errors
def partners_verify(state: State, partnership: str, code: str, key_file: Path | None) -> None:
    """Record that CODE, read to you by your partner, equals your safety code."""
    from blindmap import _trust, crypto

    with state.client() as client:
        p = _resolve(client, partnership)
    mine, note = _safety(p, key_file)
    if mine is None:
        fail(f"cannot compute the safety code: {note}", EXIT_REJECTED)
    if not crypto.safety_codes_equal(mine, code):
        fail(
            "the codes differ: a key may have been substituted. Do not sync with this "
            "partnership; contact your partner and the escrow operator.",
            EXIT_REJECTED,
        )
    assert p.partner.public_key and p.me.public_key
    entry = _trust.record(
        str(p.id),
        partner=p.partner.slug,
        partner_key=p.partner.public_key,
        my_key=p.me.public_key,
        key_file=key_file,
    )
    state.emit(
        entry,
        lambda: state.console.print(f"[green]Verified[/] the partnership with {p.partner.slug}."),
    )


@partners.command("status")
@click.argument("partnership")
@click.option(
    "--wait",
    "wait_seconds",
    type=float,
    default=0.0,
    show_default=True,
    help="Wait up to this many seconds for my lists' match jobs to finish.",
)
@pass_state
@handle_errors
def partners_status(state: State, partnership: str, wait_seconds: float) -> None:
    """Both sides' committed lists: size, upload time, normalizer, stale keys, matching."""
    import time

    with state.client() as client:
        p = _resolve(client, partnership)
        deadline = time.monotonic() + wait_seconds
        while True:
            st = client.sync_status(p.id)
            busy = [
                s
                for s in st.mine
                if s.match_job in (protocol.JobState.queued, protocol.JobState.running)
            ]
            if not busy or time.monotonic() >= deadline:
                break
            time.sleep(0.2)

    def human() -> None:
        table = Table(
            "side", "population", "records", "committed", "normalizer", "keys", "matching"
        )
        for side, rows in (("mine", st.mine), (p.partner.slug, st.partner)):
            for s in rows:
                table.add_row(
                    side,
                    s.population,
                    str(s.records),
                    f"{s.committed_at:%Y-%m-%d %H:%M}",
                    s.normalizer_version,
                    "STALE" if s.stale_keys else "ok",
                    s.match_job.value if s.match_job else "",
                )
        state.console.print(table)
        for w in st.warnings:
            state.console.print(f"[yellow]warning:[/] {w}", highlight=False)

    state.emit(st, human)


@partners.command("end")
@click.argument("partnership")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@pass_state
@handle_errors
def partners_end(state: State, partnership: str, yes: bool) -> None:
    """End a partnership: the escrow deletes all of its data and returns a receipt."""
    with state.client() as client:
        p = _resolve(client, partnership)
        if not yes:
            click.confirm(
                f"End the partnership with {p.partner.slug} and delete all its data?", abort=True
            )
        receipt = client.end_partnership(p.id)

    def human() -> None:
        state.console.print(
            f"Ended the partnership with {p.partner.slug} "
            f"at {receipt.ended_at:%Y-%m-%d %H:%M:%S} UTC."
        )
        for table, n in sorted(receipt.deleted.items()):
            state.console.print(f"  deleted {n} {table}")

    state.emit(receipt, human)


# -- policies --------------------------------------------------------------------------------
@main.group()
def policy() -> None:
    """What you share with a partner (see policies/README.md)."""


@policy.command("show")
@click.argument("partnership")
@click.option(
    "--partner", "partner_side", is_flag=True, help="Show what the partner shares with me."
)
@pass_state
@handle_errors
def policy_show(state: State, partnership: str, partner_side: bool) -> None:
    """Show my current policy toward a partner (or, with --partner, theirs toward me)."""
    from blindmap.policy import Policy

    with state.client() as client:
        p = _resolve(client, partnership)
        if partner_side:
            view = client.get_partner_policy(p.id)

            def human() -> None:
                state.console.print(f"{p.partner.slug} shares with you (policy v{view.version}):")
                table = Table("population", "kind", "share", "fields")
                for sp in view.populations:
                    table.add_row(sp.slug, sp.kind.value, sp.share, ", ".join(sp.fields))
                state.console.print(table)
                state.console.print(
                    f"min_count {view.min_count} · min_population {view.min_population} · "
                    f"reciprocal {str(view.reciprocal).lower()} · "
                    f"match_on {', '.join(view.match_on)}"
                )

            state.emit(view, human)
            return
        mine = client.get_policy(p.id)

    def show_mine() -> None:
        state.console.print(f"# policy v{mine.version} toward {p.partner.slug}", highlight=False)
        click.echo(Policy.model_validate(mine.document).to_yaml())

    state.emit(mine, show_mine)


def _load_policy_file(path: Path) -> Any:
    from blindmap.policy import Policy

    try:
        return Policy.from_yaml(path)
    except (ValueError, OSError) as exc:
        fail(f"{path}: {exc}", EXIT_USAGE)


@policy.command("diff")
@click.argument("partnership")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@pass_state
@handle_errors
def policy_diff(state: State, partnership: str, file: Path) -> None:
    """Show how FILE differs from my current policy toward a partner."""
    import difflib

    from blindmap.policy import Policy

    new = _load_policy_file(file)
    with state.client() as client:
        p = _resolve(client, partnership)
        cur = client.get_policy(p.id)
    old_text = Policy.model_validate(cur.document).to_yaml().splitlines(keepends=True)
    new_text = new.to_yaml().splitlines(keepends=True)
    diff = list(difflib.unified_diff(old_text, new_text, f"current (v{cur.version})", str(file)))
    state.emit(
        {"changed": bool(diff), "diff": "".join(diff)},
        lambda: click.echo("".join(diff) if diff else "no change"),
    )


@policy.command("apply")
@click.argument("partnership")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@pass_state
@handle_errors
def policy_apply(state: State, partnership: str, file: Path) -> None:
    """Validate FILE locally, then apply it as my next policy version toward a partner."""
    new = _load_policy_file(file)
    for warning in new.warnings():
        err_console.print(f"[yellow]warning:[/] {warning}", highlight=False)
    with state.client() as client:
        p = _resolve(client, partnership)
        version = client.put_policy(p.id, new)
    state.emit(
        version,
        lambda: state.console.print(
            f"Applied {file} as policy v{version.version} toward {p.partner.slug}.", highlight=False
        ),
    )


# -- audit -----------------------------------------------------------------------------------
@main.command()
@click.option("--limit", default=50, show_default=True, type=click.IntRange(1, 100000))
@pass_state
@handle_errors
def audit(state: State, limit: int) -> None:
    """My company's audit trail (who changed what, when), newest first."""
    with state.client() as client:
        events = client.audit_events(limit=limit)

    def human() -> None:
        table = Table("when", "action", "target", "by key")
        for e in events:
            table.add_row(
                f"{e.created_at:%Y-%m-%d %H:%M:%S}",
                e.action,
                f"{e.target_type} {e.target_id or ''}",
                (e.actor_key_prefix or "operator") + "…",
            )
        state.console.print(table)

    state.emit(events, human)


# -- sync ------------------------------------------------------------------------------------
# Self-contained: `blindmap.sync` does the work (and is imported lazily, it pulls in csv and
# the normalizer); this block parses options, shows progress and the summary.


@main.command("sync")
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path))
@click.option(
    "--partner",
    "partner_slugs",
    multiple=True,
    metavar="SLUG",
    help="Partner slug or partnership id (repeatable).",
)
@click.option("--all", "all_partners", is_flag=True, help="Every active partnership.")
@click.option("--population", metavar="POP", help="The whole file is this population.")
@click.option("--population-column", metavar="COL", help="Column that says each row's population.")
@click.option(
    "--map",
    "population_map",
    metavar="'VALUE=pop,...'",
    help="With --population-column: cell value → population (case-insensitive); rows "
    "with other values are skipped as unmapped-population.",
)
@click.option(
    "--column-map",
    metavar="'field=Column,...'",
    help="Override header detection, e.g. 'website=Website,name=\"Account Name\"' "
    "(fields: id name website owner owner_email stage type industry country).",
)
@click.option(
    "--chunk-size",
    type=click.IntRange(1, 1_000_000),
    default=10_000,
    show_default=True,
    help="Records per chunk (a chunk also closes at 4 MiB).",
)
@click.option(
    "--jobs",
    type=click.IntRange(1, 64),
    default=None,
    help="Processes that normalize and seal [default: every CPU for large files, from 4 CPUs].",
)
@click.option(
    "--send-ahead",
    type=click.IntRange(1, 8),
    default=2,
    show_default=True,
    help="Chunks in flight to the escrow at once (1: one after the other).",
)
@click.option("--dry-run", is_flag=True, help="Read, tokenize and seal, but send nothing.")
@click.option(
    "--skipped-file",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Write the skipped rows (with line and reason) to this CSV.",
)
@click.option(
    "--confirm-shrink", is_flag=True, help="Allow replacing a list with a much smaller one."
)
@_key_file_option
@pass_state
@handle_errors
def sync_command(
    state: State,
    file: Path,
    partner_slugs: tuple[str, ...],
    all_partners: bool,
    population: str | None,
    population_column: str | None,
    population_map: str | None,
    column_map: str | None,
    chunk_size: int,
    jobs: int | None,
    send_ahead: int,
    dry_run: bool,
    skipped_file: Path | None,
    confirm_shrink: bool,
    key_file: Path | None,
) -> None:
    """Upload FILE (a CRM export as CSV) to your partnerships: tokens and sealed fields only.

    Reads UTF-8 CSV (with or without BOM); Salesforce and HubSpot headers are recognised.
    Each row's website is normalized to a domain; rows without one (blank, free-mail,
    LinkedIn & co.) and duplicates are skipped and counted. For each partnership the
    records are tokenized with that partnership's keys, the fields your policy shares
    are sealed for the partner, and the list replaces your previous one atomically.

    Resuming: chunks are staged under uploads/ beside your key file until the upload is
    committed. If a run is interrupted, run the same command again: when the file,
    options, policy fields and keys are unchanged it continues the same upload with the
    same bytes, sending only what the escrow lacks; otherwise it discards the old staged
    upload and starts afresh. Connection failures during a run are retried in place.
    """
    from blindmap import keyfile
    from blindmap import sync as bsync

    if bool(partner_slugs) == all_partners:
        fail("give --partner SLUG (repeatable) or --all", EXIT_USAGE)
    if (population is None) == (population_column is None):
        fail("give --population POP, or --population-column COL with --map", EXIT_USAGE)
    if population_map and population_column is None:
        fail("--map needs --population-column", EXIT_USAGE)
    try:
        cmap = bsync.parse_mapping(column_map, what="--column-map")
        pmap = bsync.parse_mapping(population_map, what="--map")
        with _sync_progress(state) as progress:
            read = bsync.read_accounts(
                file,
                column_map=cmap,
                population=population,
                population_column=population_column,
                population_map=pmap or None,
                keep_skipped_rows=skipped_file is not None,
                progress=progress,
                jobs=jobs,
            )
    except bsync.SyncError as exc:
        fail(str(exc), EXIT_USAGE)
    if skipped_file is not None:
        _write_skipped(skipped_file, read)
    with _key_file_errors():
        private = keyfile.load_private_key(key_file, passphrase=_ask_passphrase(confirm=False))
    try:
        with state.client() as client, _sync_progress(state) as progress:
            report = bsync.sync(
                client,
                file,
                private_key=private,
                partners=None if all_partners else list(partner_slugs),
                chunk_size=chunk_size,
                dry_run=dry_run,
                confirm_shrink=confirm_shrink,
                key_file=key_file,
                read=read,
                progress=progress,
                jobs=jobs,
                send_ahead=send_ahead,
            )
    except bsync.UnknownPartnerError as exc:
        fail(str(exc), EXIT_NOT_FOUND)
    except bsync.SyncInputError as exc:
        fail(str(exc), EXIT_USAGE)
    except bsync.SyncError as exc:
        fail(str(exc), EXIT_REJECTED)
    data = report.as_dict()
    if skipped_file is not None:
        data["skipped_file"] = str(skipped_file)
    state.emit(data, lambda: _show_sync_report(state, report, read, skipped_file))


@contextlib.contextmanager
def _sync_progress(state: State) -> Iterator[Callable[[Any], None] | None]:
    """A rich progress display fed by `blindmap.sync.ProgressEvent`s (none with --json)."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

    if state.as_json or not err_console.is_terminal:
        yield None
        return
    tasks: dict[tuple[str, str | None, str | None], Any] = {}
    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        console=err_console,
        transient=False,
    ) as bar:

        def on_event(ev: Any) -> None:
            label = {"read": "rows read", "build": "records sealed", "send": "chunks sent"}
            if ev.stage == "commit":
                return
            key = (ev.stage, ev.partner, ev.population)
            if key not in tasks:
                where = f"{ev.partner}/{ev.population} " if ev.partner else ""
                tasks[key] = bar.add_task(f"{where}{label[ev.stage]}", total=ev.total)
            bar.update(tasks[key], completed=ev.done, total=ev.total)

        yield on_event


def _write_skipped(path: Path, read: Any) -> None:
    import csv

    try:
        with path.open("w", newline="", encoding="utf-8") as f:
            w = csv.writer(f)
            w.writerow(["line", "reason", "population", *read.header])
            for s in read.skipped:
                w.writerow([s.line, s.reason, s.population or "", *(s.row or ())])
    except OSError as exc:
        fail(f"{path}: {exc.strerror or exc}", EXIT_USAGE)


def _show_sync_report(state: State, report: Any, read: Any, skipped_file: Path | None) -> None:
    c = state.console
    cols = ", ".join(f"{f}={'|'.join(h)}" for f, h in read.columns.items())
    c.print(f"Read {report.rows_read} rows from {report.path}", highlight=False)
    c.print(f"  columns: {cols}", highlight=False, soft_wrap=True)
    for note in report.notes:
        c.print(note[0].upper() + note[1:] + ".", highlight=False, soft_wrap=True)
    for w in report.warnings:
        err_console.print(f"[yellow]warning:[/] {w}", highlight=False, soft_wrap=True)
    table = Table("partner", "population", "records", "chunks", "tokens", "sealed fields", "")
    for u in report.uploads:
        status = u.status + (" (resumed)" if u.resumed else "")
        table.add_row(
            u.partner,
            u.population,
            str(u.records),
            str(u.chunks),
            "+".join(u.token_kinds),
            ", ".join(u.sealed_fields) or "—",
            status,
        )
    c.print(table)
    if report.skipped:
        skipped = Table("skipped because", "rows")
        for reason, n in sorted(report.skipped.items(), key=lambda kv: -kv[1]):
            skipped.add_row(reason, str(n))
        c.print(skipped)
        if skipped_file is not None:
            c.print(f"Skipped rows written to {skipped_file}", highlight=False)
    if report.dry_run:
        c.print("Dry run: nothing was sent.", style="bold")


# -- reports and the disclosure log ----------------------------------------------------------
# Self-contained: `blindmap.reports` decrypts and renders (imported lazily); this block
# resolves the partnership, loads the key file, fetches, and writes the chosen format.

_FORMATS = ("table", "csv", "json", "html")
_DEFAULT_HTML = "blindmap-report.html"


def _format_option(fn: Callable[P, R]) -> Callable[P, R]:
    fn = click.option(
        "--output",
        "-o",
        type=click.Path(dir_okay=False, path_type=Path),
        help=f"Write to this file (default: stdout; html: ./{_DEFAULT_HTML}).",
    )(fn)
    return click.option(
        "--format",
        "fmt",
        type=click.Choice(_FORMATS),
        default=None,
        help="Output format [default: table, or json with --json].",
    )(fn)


def _report_keys(client: Client, p: protocol.Partnership, key_file: Path | None) -> Any:
    """The partnership's report keys from my key file; warns when my key is not the one
    the escrow holds (payloads sealed with the other key will not open)."""
    from blindmap import crypto, keyfile
    from blindmap import reports as rep

    if p.partner.public_key is None:
        fail(f"{p.partner.slug} has not registered a public key yet", EXIT_REJECTED)
    with _key_file_errors():
        private = keyfile.load_private_key(key_file, passphrase=_ask_passphrase(confirm=False))
    if p.me.public_key and crypto.decode_public_key(p.me.public_key) != crypto.public_key_bytes(
        private
    ):
        err_console.print(
            "[yellow]warning:[/] your key file differs from the key the escrow holds for you; "
            "payloads sealed with the other key cannot be decrypted "
            "(`blindmap key register`, then re-sync)",
            highlight=False,
            soft_wrap=True,
        )
    return rep.ReportKeys.for_partnership(private, p)


@contextlib.contextmanager
def _fetch_progress(state: State, what: str) -> Iterator[Callable[[int], None] | None]:
    """A spinner with a running count on stderr, only on a terminal and without --json."""
    if state.as_json or not err_console.is_terminal:
        yield None
        return
    with err_console.status(f"Fetching {what}…") as status:

        def update(n: int) -> None:
            status.update(f"Fetching {what}… {n}")

        yield update


def _write_report(state: State, report: Any, fmt: str | None, output: Path | None) -> None:
    from blindmap import reports as rep

    fmt = fmt or ("json" if state.as_json else "table")
    if fmt == "html" and output is None:
        output = Path(_DEFAULT_HTML)
    if fmt == "table":
        if output is None:
            rep.render_table(report, state.console)
        else:
            try:
                with output.open("w", encoding="utf-8") as f:
                    rep.render_table(report, Console(file=f, width=160, force_terminal=False))
            except OSError as exc:
                fail(f"{output}: {exc.strerror or exc}", EXIT_USAGE)
    else:
        try:
            text = {"csv": rep.to_csv, "json": rep.to_json, "html": rep.to_html}[fmt](report)
        except ValueError as exc:
            fail(str(exc), EXIT_USAGE)
        if output is None:
            click.echo(text, nl=False)
        else:
            try:
                output.write_text(text, encoding="utf-8", newline="")
            except OSError as exc:
                fail(f"{output}: {exc.strerror or exc}", EXIT_USAGE)
    if output is not None:
        err_console.print(f"Wrote {output}", highlight=False, soft_wrap=True)
    if report.undecryptable:
        err_console.print(
            f"[yellow]warning:[/] {report.undecryptable} payload(s) could not be decrypted "
            "(a key changed since the upload: re-sync)",
            highlight=False,
        )


def _split_pops(value: str | None) -> list[str] | None:
    if not value:
        return None
    return [v.strip() for v in value.split(",") if v.strip()] or None


@main.group()
def report() -> None:
    """Reports: what your partner's policy releases, decrypted on this machine.

    \b
      summary PARTNER        the account-mapping matrix (mine x theirs, counts)
      overlaps PARTNER       my matched accounts with the partner's populations and fields
      white-space PARTNER    the partner's accounts (shared in full) that I do not have
      lookup PARTNER DOMAIN  one account of mine: does the partner have it, and how
      ecosystem              my accounts across all my active partnerships
      html PARTNER           the full report (matrix heat map, overlaps, white space)
                             in one self-contained HTML file

    PARTNER is the partner's slug or the partnership id. Every report takes
    --format table|csv|json|html and --output FILE; `--format html` on a single report
    writes just that report, `report html` writes all three sections. html goes to
    ./blindmap-report.html unless --output says otherwise; the rest go to stdout. Every
    output names the partnership and the policy versions that produced it. CSV cells a
    spreadsheet would run as formulas are prefixed with '.

    Every report is a release of the partner's data: the escrow logs it in the
    disclosure log both partners can read (`blindmap disclosures`), and overlaps, white
    space and lookups count against the partnership's daily reveal budget (exit 8 when
    it is spent).
    """


@report.command("summary")
@click.argument("partnership")
@_format_option
@pass_state
@handle_errors
def report_summary(state: State, partnership: str, fmt: str | None, output: Path | None) -> None:
    """The account-mapping matrix: distinct matched accounts per population pair.

    Cells under the partner's min_count show as '<k'; '—' marks a population too small
    (min_population). No key file is needed: counts are not encrypted.
    """
    from blindmap import reports as rep

    with state.client() as client:
        p = _resolve(client, partnership)
        summary = client.report_summary(p.id)
    ctx = rep.Context.of(p, summary.policy_versions, summary.generated_at)
    _write_report(state, rep.Report(ctx, summary=summary), fmt, output)


@report.command("overlaps")
@click.argument("partnership")
@click.option("--mine", metavar="POP", help="Only my population POP.")
@click.option("--theirs", metavar="POP", help="Only the partner's population POP.")
@_format_option
@_key_file_option
@pass_state
@handle_errors
def report_overlaps(
    state: State,
    partnership: str,
    mine: str | None,
    theirs: str | None,
    fmt: str | None,
    output: Path | None,
    key_file: Path | None,
) -> None:
    """My matched accounts (my id, name, domain) with the partner's populations and the
    fields its policy releases. One row per (my account, partner record).

    Example (co-sell: their customers that are my open opportunities):
    `blindmap report overlaps globex --mine opportunities --theirs customers`
    """
    from blindmap import reports as rep

    with state.client() as client:
        p = _resolve(client, partnership)
        keys = _report_keys(client, p, key_file)
        with _fetch_progress(state, "overlaps") as progress:
            rows, versions, notes = rep.overlap_rows(
                client, keys, p.id, mine=mine, theirs=theirs, on_progress=progress
            )
    result = rep.Report(rep.Context.of(p, versions), overlaps=rows)
    result.notes.extend(notes)
    _write_report(state, result, fmt, output)


@report.command("white-space")
@click.argument("partnership")
@click.option("--theirs", metavar="POP", help="Only the partner's population POP.")
@click.option(
    "--not-in",
    metavar="POP,...",
    help="Net-new relative to these populations of mine only (default: all of mine).",
)
@_format_option
@_key_file_option
@pass_state
@handle_errors
def report_white_space(
    state: State,
    partnership: str,
    theirs: str | None,
    not_in: str | None,
    fmt: str | None,
    output: Path | None,
    key_file: Path | None,
) -> None:
    """The partner's accounts in populations it shares in full that match none of mine
    (or none of --not-in), with their fields (name, domain, owner email, ...)."""
    from blindmap import reports as rep

    with state.client() as client:
        p = _resolve(client, partnership)
        keys = _report_keys(client, p, key_file)
        with _fetch_progress(state, "white space") as progress:
            released, versions, notes = rep.white_space_rows(
                client, keys, p.id, theirs=theirs, not_in=_split_pops(not_in), on_progress=progress
            )
    result = rep.Report(rep.Context.of(p, versions), white_space=released)
    result.notes.extend(notes)
    _write_report(state, result, fmt, output)


@report.command("lookup")
@click.argument("partnership")
@click.argument("domains", nargs=-1, required=True, metavar="DOMAIN...")
@_format_option
@_key_file_option
@pass_state
@handle_errors
def report_lookup(
    state: State,
    partnership: str,
    domains: tuple[str, ...],
    fmt: str | None,
    output: Path | None,
    key_file: Path | None,
) -> None:
    """Ask about accounts of mine by domain (or website/email): which of the partner's
    populations hold each, with the released fields.

    The escrow answers only for accounts in lists you synced with this partner.
    """
    from blindmap import normalize
    from blindmap import reports as rep

    if len(domains) > 100:
        fail("at most 100 domains per lookup", EXIT_USAGE)
    normalized: dict[str, str] = {}
    for d in domains:
        n = normalize.domain(d)
        if n is None:
            fail(
                f"{d!r} has no matchable domain (free-mail, platform page, IP address or "
                "unknown suffix)",
                EXIT_USAGE,
            )
        normalized.setdefault(n, d)
    with state.client() as client:
        p = _resolve(client, partnership)
        keys = _report_keys(client, p, key_file)
        tokens = {keys.domain_token(n): n for n in normalized}
        try:
            resp = client.lookup(
                p.id,
                [protocol.LookupToken(kind=protocol.TokenKind.domain, value=t) for t in tokens],
            )
        except _errors.ValidationError as exc:
            fail(
                f"the escrow refused the lookup of {', '.join(normalized)}: it answers only for "
                f"accounts in your own lists synced with {p.partner.slug} "
                f"(`blindmap sync ... --partner {p.partner.slug}`). Escrow said: {exc}",
                EXIT_REJECTED,
            )
    result = rep.Report(
        rep.Context.of(p, resp.policy_versions), lookup=rep.decrypt_lookup(keys, tokens, resp)
    )
    _write_report(state, result, fmt, output)


@report.command("ecosystem")
@_format_option
@_key_file_option
@pass_state
@handle_errors
def report_ecosystem(
    state: State, fmt: str | None, output: Path | None, key_file: Path | None
) -> None:
    """For each of my accounts: which partners have it, in which populations, with which
    fields. Joined on this machine by my local id across all my active partnerships (the
    escrow cannot join them: tokens differ per partnership)."""
    from blindmap import keyfile
    from blindmap import reports as rep

    with _key_file_errors():
        private = keyfile.load_private_key(key_file, passphrase=_ask_passphrase(confirm=False))
    parts: list[tuple[Any, Any]] = []
    notes: list[str] = []
    with state.client() as client:
        active = client.list_partnerships(status=protocol.PartnershipStatus.active)
        for p in active:
            if p.partner.public_key is None:
                notes.append(f"{p.partner.slug}: no public key registered yet; skipped")
                continue
            keys = rep.ReportKeys.for_partnership(private, p)
            with _fetch_progress(state, f"overlaps with {p.partner.slug}") as progress:
                rows, versions, more = rep.overlap_rows(client, keys, p.id, on_progress=progress)
            notes.extend(f"{p.partner.slug}: {n}" for n in more)
            parts.append((rep.Context.of(p, versions), rows))
    result = rep.build_ecosystem(parts)
    result.notes.extend(notes)
    _write_report(state, result, fmt, output)


@report.command("html")
@click.argument("partnership")
@click.option("--mine", metavar="POP", help="Overlaps: only my population POP.")
@click.option("--theirs", metavar="POP", help="Overlaps and white space: only their POP.")
@click.option("--not-in", metavar="POP,...", help="White space relative to these of mine.")
@click.option(
    "--output",
    "-o",
    type=click.Path(dir_okay=False, path_type=Path),
    default=Path(_DEFAULT_HTML),
    show_default=True,
    help="The HTML file to write.",
)
@_key_file_option
@pass_state
@handle_errors
def report_html(
    state: State,
    partnership: str,
    mine: str | None,
    theirs: str | None,
    not_in: str | None,
    output: Path,
    key_file: Path | None,
) -> None:
    """The full report in one self-contained HTML file: a header (partner, time, policy
    versions), the matrix as a heat map, the overlaps and the white space.

    No scripts and no external assets: open it in any browser, or mail it.
    """
    from blindmap import reports as rep

    with state.client() as client:
        p = _resolve(client, partnership)
        keys = _report_keys(client, p, key_file)
        summary = client.report_summary(p.id)
        result = rep.Report(
            rep.Context.of(p, summary.policy_versions, summary.generated_at), summary=summary
        )
        with _fetch_progress(state, "overlaps") as progress:
            result.overlaps, versions, notes = rep.overlap_rows(
                client, keys, p.id, mine=mine, theirs=theirs, on_progress=progress
            )
        if versions is not None:
            result.add_versions(versions, "overlaps")
        with _fetch_progress(state, "white space") as progress:
            result.white_space, ws_versions, ws_notes = rep.white_space_rows(
                client, keys, p.id, theirs=theirs, not_in=_split_pops(not_in), on_progress=progress
            )
        if ws_versions is not None:
            result.add_versions(ws_versions, "white space")
    result.notes.extend(notes + ws_notes)
    _write_report(state, result, "html", output)


@main.group()
def disclosures() -> None:
    """The disclosure log: every release of data in a partnership, hash-chained.

    Both partners read the same log; `verify` recomputes the chain on this machine, so
    an escrow that edits or drops an entry is caught.
    """


@disclosures.command("list")
@click.argument("partnership")
@click.option(
    "--format",
    "fmt",
    type=click.Choice(("table", "json")),
    default=None,
    help="Output format [default: table, or json with --json].",
)
@pass_state
@handle_errors
def disclosures_list(state: State, partnership: str, fmt: str | None) -> None:
    """Who saw what: every release in the partnership, oldest first."""
    from rich.table import Column

    with state.client() as client:
        p = _resolve(client, partnership)
        entries = client.disclosures(p.id)
    if (fmt or ("json" if state.as_json else "table")) == "json":
        click.echo(json.dumps(_jsonable(entries), indent=2, sort_keys=True))
        return
    table = Table(
        "#",
        Column("when (UTC)", no_wrap=True),
        "viewer",
        "owner",
        "report",
        "viewer pop",
        "owner pop",
        "records",
        "policy versions",
        "hash",
        title=f"Disclosure log of the partnership with {p.partner.slug} ({p.id})",
        title_justify="left",
    )
    for e in entries:
        table.add_row(
            str(e.seq),
            f"{e.created_at:%Y-%m-%d %H:%M:%S}",
            e.viewer,
            e.owner,
            e.report,
            e.viewer_population or "",
            e.owner_population or "",
            str(e.records),
            " ".join(f"{k}:v{v}" for k, v in sorted(e.policy_versions.items())),
            e.hash[:8] + "…",
        )
    state.console.print(table)


@disclosures.command("verify")
@click.argument("partnership")
@pass_state
@handle_errors
def disclosures_verify(state: State, partnership: str) -> None:
    """Recompute the log's hash chain; exit 6 if an entry was modified, inserted or removed."""
    from blindmap import disclosure

    with state.client() as client:
        p = _resolve(client, partnership)
        entries = client.disclosures(p.id)
    try:
        n = disclosure.verify_chain(e.model_dump() for e in entries)
    except disclosure.ChainError as exc:
        if state.as_json:
            click.echo(json.dumps({"ok": False, "seq": exc.seq, "error": str(exc)}, indent=2))
            sys.exit(EXIT_REJECTED)
        fail(
            f"the disclosure log of the partnership with {p.partner.slug} is BROKEN at "
            f"{exc}. Keep a copy (`blindmap disclosures list {p.partner.slug} --format json`) "
            "and tell your partner and the escrow operator.",
            EXIT_REJECTED,
        )
    head = entries[-1].hash if entries else disclosure.GENESIS
    state.emit(
        {"ok": True, "entries": n, "head": head},
        lambda: state.console.print(
            f"[green]OK[/]: the disclosure log with {p.partner.slug} has {n} entries and its "
            f"hash chain is intact (head {head[:16]}…).",
            highlight=False,
        ),
    )


if __name__ == "__main__":  # pragma: no cover
    main()
