"""`blindmap-server`: operator commands (serve, migrate, create-company, demo)."""

from __future__ import annotations

import json
import sys

import click
from pydantic import ValidationError

from service.config import Settings


def _settings(**overrides: object) -> Settings:
    try:
        return Settings(**overrides)  # type: ignore[arg-type]
    except ValidationError as exc:
        lines = [
            f"  {'.'.join(map(str, e['loc'])) or 'settings'}: {e['msg']}" for e in exc.errors()
        ]
        raise click.ClickException("invalid configuration:\n" + "\n".join(lines)) from None


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="blindmap-service")
def main() -> None:
    """Run and administer a Blindmap escrow. Configuration comes from BLINDMAP_* variables."""


@main.command()
def migrate() -> None:
    """Apply database migrations up to the newest."""
    from service.db import migrate as run

    settings = _settings()
    run(settings.database_url)
    click.echo(f"database at {_redact(settings.database_url)} is up to date", err=True)


@main.command()
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8000, show_default=True, type=int)
@click.option("--workers", default=1, show_default=True, type=int)
@click.option(
    "--migrate/--no-migrate",
    "do_migrate",
    default=None,
    help="Apply migrations first [default: on for SQLite, off for PostgreSQL].",
)
def serve(host: str, port: int, workers: int, do_migrate: bool | None) -> None:
    """Serve the HTTP API (OpenAPI docs at /docs)."""
    import uvicorn

    from service.db import migrate as run

    settings = _settings()
    if do_migrate if do_migrate is not None else settings.is_sqlite:
        run(settings.database_url)
    click.echo(
        f"Blindmap escrow on http://{host}:{port} — API docs at http://{host}:{port}/docs", err=True
    )
    uvicorn.run(
        "service.main:serve_app",
        factory=True,
        host=host,
        port=port,
        workers=workers,
        log_level="warning",
        access_log=False,
    )


@main.command()
@click.option("--once", is_flag=True, help="Run the jobs that are ready, then exit.")
def worker(once: bool) -> None:
    """Run background jobs (matching) in this process, beside or instead of the embedded
    worker (set BLINDMAP_EMBEDDED_WORKER=false on the API processes to use only these).
    On PostgreSQL several workers share the queue with FOR UPDATE SKIP LOCKED."""
    import signal

    from service import jobs, logs
    from service.db import make_engine, make_sessionmaker

    settings = _settings()
    logs.configure(settings.log_level)
    engine = make_engine(settings)
    factory = make_sessionmaker(engine)
    if once:
        n = jobs.drain(factory, settings)
        click.echo(f"ran {n} job(s)", err=True)
        engine.dispose()
        return
    w = jobs.Worker(factory, settings)
    signal.signal(signal.SIGTERM, lambda *_: w.stopping.set())
    click.echo(f"worker {w.id} running; Ctrl-C to stop", err=True)
    w.start()
    try:
        while w.thread.is_alive():
            w.thread.join(0.5)
    except KeyboardInterrupt:
        pass
    finally:
        w.stop()
        engine.dispose()


@main.command("create-company")
@click.argument("slug")
@click.option("--name", "display_name", required=True, help="Display name, e.g. 'Acme Corp'.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def create_company(slug: str, display_name: str, as_json: bool) -> None:
    """Create a company and print its first admin key (shown once)."""
    from pydantic import TypeAdapter

    from blindmap.protocol import DisplayName, Slug
    from service import errors
    from service.company import service
    from service.db import make_engine, make_sessionmaker
    from service.db import migrate as run

    try:
        TypeAdapter(Slug).validate_python(slug)
    except ValidationError:
        raise click.BadParameter(
            "lowercase letters, digits and inner hyphens, at most 63 characters", param_hint="SLUG"
        ) from None
    try:
        display_name = TypeAdapter(DisplayName).validate_python(display_name)
    except ValidationError as exc:
        raise click.BadParameter(exc.errors()[0]["msg"], param_hint="--name") from None
    settings = _settings()
    if settings.is_sqlite:
        run(settings.database_url)
    engine = make_engine(settings)
    try:
        with make_sessionmaker(engine).begin() as session:
            company, key = service.create(
                session, slug=slug, display_name=display_name, secret=settings.hmac_secret
            )
    except errors.ServiceError as exc:
        raise click.ClickException(str(exc)) from None
    finally:
        engine.dispose()
    if as_json:
        click.echo(json.dumps({"id": str(company.id), "slug": slug, "admin_key": key}))
    else:
        click.echo(f"Created company '{display_name}' ({slug}).", err=True)
        click.echo("Its first admin key (shown once; store it now):", err=True)
        click.echo(key)


@main.command()
@click.option(
    "--workdir", default="var/demo", show_default=True, help="Where the demo keeps its files."
)
def demo(workdir: str) -> None:
    """Run the end-to-end walkthrough on an embedded SQLite database."""
    from service.demo import run

    sys.exit(run(workdir))


def _redact(url: str) -> str:
    if "@" in url and "://" in url:
        scheme, rest = url.split("://", 1)
        return f"{scheme}://…@{rest.rsplit('@', 1)[1]}"
    return url


if __name__ == "__main__":  # pragma: no cover
    main()
