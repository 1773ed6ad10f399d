"""`make demo`: the account-mapping story, end to end, on an embedded SQLite escrow.

Every step runs the same commands a user types (`blindmap-server …`, `blindmap …`), so
what the newcomer reads is what they can run themselves. The escrow's database stays at
var/demo/escrow.db; the HTML report is written to ./demo-report.html.
"""

from __future__ import annotations

import json
import os
import re
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
ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"
POLICIES = ROOT / "policies"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _step(title: str) -> None:
    console.print()
    console.rule(f"[bold cyan]{title}")


def _say(text: str) -> None:
    console.print(f"[italic]{text}[/]", soft_wrap=True)


class Actor:
    """One company's terminal: its API key and key file in the environment."""

    def __init__(self, name: str, env: dict[str, str]) -> None:
        self.name, self.env = name, env

    def run(self, *args: str, capture: bool = False, check: bool = True) -> str:
        cmd = ["blindmap", *args]
        console.print(f"[dim]{self.name} $[/] [bold]{shlex.join(cmd)}[/]", soft_wrap=True)
        proc = subprocess.run(
            [str(BIN / cmd[0]), *cmd[1:]],
            env=self.env,
            text=True,
            capture_output=capture,
            check=False,
            cwd=ROOT,
        )
        if check and proc.returncode != 0:
            if capture:
                sys.stderr.write(proc.stdout + proc.stderr)
            raise SystemExit(f"demo step failed (exit {proc.returncode}): {shlex.join(cmd)}")
        return proc.stdout if capture else ""


def _wait_ready(url: str, server: subprocess.Popen[bytes], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise SystemExit(f"the escrow exited early with code {server.returncode}")
        try:
            if httpx.get(url + "/readyz", timeout=1.0).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    raise SystemExit(f"the escrow did not become ready within {timeout:.0f}s")


def _create_company(env: dict[str, str], slug: str, name: str) -> str:
    cmd = ["blindmap-server", "create-company", slug, "--name", name, "--json"]
    console.print(f"[dim]operator $[/] [bold]{shlex.join(cmd)}[/]", soft_wrap=True)
    out = subprocess.run(
        [str(BIN / cmd[0]), *cmd[1:]], env=env, text=True, capture_output=True, check=True
    ).stdout
    key = str(json.loads(out)["admin_key"])
    console.print(f"  {name}: first admin key {key[:12]}… (shown once; the demo keeps it)")
    return key


def _plaintext_hits(db: Path, needles: list[str]) -> dict[str, int]:
    raw = b"".join(p.read_bytes() for p in sorted(db.parent.glob(db.name + "*")))
    return {n: raw.lower().count(n.lower().encode()) for n in needles}


def run(workdir: str) -> int:
    started = time.monotonic()
    work = Path(workdir).resolve()
    shutil.rmtree(work, ignore_errors=True)  # the demo always starts from scratch
    work.mkdir(parents=True)
    db = work / "escrow.db"
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    base_env = {k: v for k, v in os.environ.items() if not k.startswith("BLINDMAP_")}
    base_env.update(
        {
            "BLINDMAP_ENV": "dev",
            "BLINDMAP_DATABASE_URL": f"sqlite:///{db}",
            "BLINDMAP_URL": url,
            "COLUMNS": os.environ.get("COLUMNS", "110"),
        }
    )

    _step("1. The operator starts the escrow and creates two companies")
    _say(
        "The escrow stores tokens and ciphertext only. Its database: "
        + str(db.relative_to(ROOT) if db.is_relative_to(ROOT) else db)
    )
    server = subprocess.Popen(
        [str(BIN / "blindmap-server"), "serve", "--port", str(port)],
        env=base_env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        _wait_ready(url, server)
        console.print(f"  escrow ready at {url} (OpenAPI docs at {url}/docs while it runs)")
        acme = Actor(
            "acme",
            {
                **base_env,
                "BLINDMAP_API_KEY": _create_company(base_env, "acme", "Acme Analytics"),
                "BLINDMAP_KEY_FILE": str(work / "acme" / "key.pem"),
            },
        )
        globex = Actor(
            "globex",
            {
                **base_env,
                "BLINDMAP_API_KEY": _create_company(base_env, "globex", "Globex Cloud"),
                "BLINDMAP_KEY_FILE": str(work / "globex" / "key.pem"),
            },
        )

        _step(
            "2. Each company creates its key pair on its own machine and registers the public half"
        )
        for actor in (acme, globex):
            actor.run("init", "--register")

        _step("3. Acme invites Globex; Globex accepts; both compare the safety code out of band")
        acme.run("partners", "invite", "globex")
        globex.run("partners", "accept", "acme")
        codes = {}
        for actor, partner in ((acme, "globex"), (globex, "acme")):
            codes[actor.name] = json.loads(
                actor.run("--json", "partners", "show", partner, capture=True)
            )["safety_code"]
            console.print(f"  {actor.name} sees safety code [bold]{codes[actor.name]}[/]")
        if codes["acme"] != codes["globex"]:
            raise SystemExit("safety codes differ: a public key was substituted")
        _say(
            "Same code on both sides: no public key was swapped in transit. Each records the check:"
        )
        acme.run("partners", "verify", "globex", codes["globex"])
        globex.run("partners", "verify", "acme", codes["acme"])

        _step("4. Each side decides what it shares (a new partnership starts at counts-only)")
        acme.run("policy", "apply", "globex", str(POLICIES / "co-sell.yaml"))
        globex.run("policy", "apply", "acme", str(POLICIES / "open-book.yaml"))

        _step("5. Each side syncs its CRM export: normalized, tokenized and sealed locally")
        acme.run(
            "sync",
            str(EXAMPLES / "acme-salesforce-accounts.csv"),
            "--partner",
            "globex",
            "--population-column",
            "Type",
            "--map",
            "Customer=customers,Prospect=prospects",
        )
        globex.run(
            "sync",
            str(EXAMPLES / "globex-hubspot-companies.csv"),
            "--partner",
            "acme",
            "--population-column",
            "Lifecycle Stage",
            "--map",
            "customer=customers,opportunity=opportunities,lead=prospects",
        )

        _step("6. The escrow matches the tokens (a background job); what Globex shares with Acme")
        globex.run("partners", "status", "acme", "--wait", "30")
        acme.run("partners", "status", "globex", "--wait", "30")
        acme.run("policy", "show", "globex", "--partner")

        _step("7. The account-mapping matrix, as Acme sees it")
        acme.run("report", "summary", "globex")

        _step("8. Co-sell: Acme's customers that are Globex's open opportunities")
        globex.run("report", "overlaps", "acme", "--mine", "opportunities", "--theirs", "customers")

        _step(
            "9. White space: Globex customers Acme does not have (Globex shares customers in full)"
        )
        acme.run("report", "white-space", "globex", "--theirs", "customers")

        _step("10. The full report as one self-contained HTML file, and the disclosure log")
        acme.run("report", "html", "globex", "--output", str(Path.cwd() / "demo-report.html"))
        globex.run("disclosures", "verify", "acme")
    finally:
        _step("11. Stop the escrow")
        server.send_signal(signal.SIGTERM)
        try:
            server.wait(timeout=15)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
        # uvicorn re-raises SIGTERM after a graceful shutdown, so -SIGTERM is clean too.
        clean = server.returncode in (0, -signal.SIGTERM)
        console.print(f"  {'stopped cleanly' if clean else f'exit code {server.returncode}'}")

    _step("12. Check for yourself: the escrow holds no plaintext")
    samples = _sample_values()
    hits = _plaintext_hits(db, samples)
    for needle, n in hits.items():
        console.print(f"  {needle!r:38} {n} times in the escrow database")
    if any(hits.values()):
        raise SystemExit("plaintext found in the escrow database")
    rel = db.relative_to(ROOT) if db.is_relative_to(ROOT) else db
    _say(f"Try it: grep -a -i -c {shlex.quote(samples[0])} {rel}*   (prints 0 for each file)")
    console.print()
    console.print(
        f"[bold green]Demo complete[/] in {time.monotonic() - started:.0f}s. "
        f"Open demo-report.html in a browser; `make test` runs the whole suite."
    )
    return 0


def _sample_values() -> list[str]:
    """A few domains, names and emails taken from the sample exports themselves."""
    text = (EXAMPLES / "acme-salesforce-accounts.csv").read_text(encoding="utf-8-sig")
    domains = re.findall(r"(?:https?://)?(?:www\.)?([a-z0-9-]+\.(?:com|io|de|co\.uk))", text)
    emails = re.findall(r"[\w.+-]+@[\w-]+\.[\w.]+", text)
    names = [row.split(",")[1].strip('"') for row in text.splitlines()[1:6] if row.count(",") > 2]
    return list(dict.fromkeys([*domains[:3], *emails[:2], *[n for n in names if len(n) > 4][:2]]))
