"""`make demo`: a short, readable walkthrough against a real server on embedded SQLite.

Later issues extend it into the full account-mapping story (keys, partnership,
policies, sync, reports). Everything runs through the same commands a user types.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
from rich.console import Console

console = Console(highlight=False)
BIN = Path(sys.executable).parent


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _step(title: str) -> None:
    console.rule(f"[bold cyan]{title}")


def _show(cmd: list[str]) -> None:
    console.print(f"[dim]$[/] [bold]{shlex.join(cmd)}[/]", soft_wrap=True)


def _run(cmd: list[str], env: dict[str, str], *, capture: bool = False) -> str:
    _show(cmd)
    proc = subprocess.run(
        [str(BIN / cmd[0]), *cmd[1:]],
        env=env,
        text=True,
        capture_output=capture,
        check=False,
    )
    if proc.returncode != 0:
        if capture:
            sys.stderr.write(proc.stderr)
        raise SystemExit(f"demo step failed (exit {proc.returncode}): {' '.join(cmd)}")
    return proc.stdout if capture else ""


def _wait_ready(url: str, server: subprocess.Popen[bytes], timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise SystemExit(f"the server exited early with code {server.returncode}")
        try:
            if httpx.get(url + "/readyz", timeout=1.0).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    raise SystemExit(f"the server did not become ready within {timeout:.0f}s")


def run(workdir: str) -> int:
    work = Path(workdir).resolve()
    shutil.rmtree(work, ignore_errors=True)  # the demo always starts from scratch
    work.mkdir(parents=True)
    db = work / "escrow.db"
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    env = {
        **os.environ,
        "BLINDMAP_ENV": "dev",
        "BLINDMAP_DATABASE_URL": f"sqlite:///{db}",
        "BLINDMAP_URL": url,
    }
    env.pop("BLINDMAP_API_KEY", None)

    _step("1. The operator creates two companies (each gets one admin key, shown once)")
    keys: dict[str, str] = {}
    for slug, name in (("acme", "Acme Analytics"), ("globex", "Globex Cloud")):
        out = _run(
            ["blindmap-server", "create-company", slug, "--name", name, "--json"], env, capture=True
        )
        keys[slug] = json.loads(out)["admin_key"]
        console.print(f"  {name}: admin key {keys[slug][:12]}… (full key kept by the demo)")

    _step(f"2. Start the escrow on {url} (embedded SQLite at {db})")
    server = subprocess.Popen(
        [str(BIN / "blindmap-server"), "serve", "--port", str(port)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        _wait_ready(url, server)
        console.print(
            f"  ready; OpenAPI docs at [link]{url}/docs[/link] while it runs "
            "(`make run` keeps one up)"
        )

        _step("3. Each company asks who it is, through the `blindmap` CLI")
        for key in keys.values():
            _run(["blindmap", "whoami"], {**env, "BLINDMAP_API_KEY": key})

        _step("4. Acme's admin creates a read-only key for a sales rep and lists its keys")
        acme = {**env, "BLINDMAP_API_KEY": keys["acme"]}
        created = json.loads(
            _run(
                ["blindmap", "--json", "keys", "create", "--name", "sales rep", "--role", "reader"],
                acme,
                capture=True,
            )
        )
        console.print(
            f"  new reader key {created['prefix']}… (its secret is printed once; "
            "the escrow stores only its HMAC)"
        )
        _run(["blindmap", "keys", "list"], acme)

        _step("5. A reader key cannot create keys: a clear 403 and a non-zero exit")
        reader = {**env, "BLINDMAP_API_KEY": created["key"]}
        _show(["blindmap", "keys", "create", "--name", "x", "--role", "admin"])
        proc = subprocess.run(
            [str(BIN / "blindmap"), "keys", "create", "--name", "x", "--role", "admin"],
            env=reader,
            text=True,
            capture_output=True,
            check=False,
        )
        console.print(f"  exit code {proc.returncode}: {proc.stderr.strip()}")
        if proc.returncode == 0:
            raise SystemExit("a reader key was allowed to create a key")
    finally:
        _step("6. Stop the escrow")
        server.send_signal(signal.SIGTERM)
        try:
            server.wait(timeout=15)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
        # uvicorn re-raises SIGTERM after a graceful shutdown, so -SIGTERM is clean too.
        clean = server.returncode in (0, -signal.SIGTERM)
        console.print(
            f"  {'stopped cleanly' if clean else f'server exit code {server.returncode}'}; "
            f"the database stays at {db}"
        )
    console.print("[bold green]Demo complete.[/] Next: `make test` runs the whole suite.")
    return 0
