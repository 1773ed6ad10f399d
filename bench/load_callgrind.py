"""Server instructions per request, by kind: a deterministic companion to `bench.load`.

    .venv/bin/python -m bench.load_callgrind [--accounts 20000] [--n 40]

CPU time per request moves by ±20% on a shared machine with the neighbours' load;
instruction counts do not. This seeds a fresh PostgreSQL database through a normal
server (`bench.load`'s seeding: two companies, three lists each), then starts
`blindmap-server serve` under `valgrind --tool=callgrind --instr-atstart=no` on the same
database, and for each kind of the load mix sends `--n` sequential requests with
counting switched on (`callgrind_control -i on/off`, then a dump). `export` is the
whole overlaps report of one company at 1000 records per page, per record (thousands of
instructions). Needs valgrind; takes a few minutes (Python runs ~50x slower under it).
Kernel time (syscalls, context switches) is not counted.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import random
import shutil
import subprocess
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path

import httpx

from bench import load

KINDS = ("summary", "overlaps", "lookup", "status", "export")


def _control(*args: str) -> None:
    subprocess.run(["callgrind_control", *args], capture_output=True, check=False)


def _instructions(out_dir: Path) -> int:
    for _ in range(60):  # the dump is written by the server process, asynchronously
        files = glob.glob(f"{out_dir}/cg.*.*")
        if files:
            time.sleep(1)
            break
        time.sleep(1)
    total = 0
    for f in files:
        for line in Path(f).read_text().splitlines():
            if line.startswith("totals:"):
                total += int(line.split()[1])
                break
        os.remove(f)
    return total


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--accounts", type=int, default=20_000, help="accounts per company")
    ap.add_argument("--n", type=int, default=40, help="requests per kind")
    ap.add_argument("--kinds", default=",".join(KINDS))
    args = ap.parse_args(argv)
    if shutil.which("valgrind") is None:
        raise SystemExit("valgrind is not installed")
    res: dict[str, float] = {}
    with ExitStack() as stack:
        tmp = Path(tempfile.mkdtemp(prefix="blindmap-callgrind-"))
        stack.callback(shutil.rmtree, tmp, True)
        url = load.make_database("postgresql", stack)
        a, b = load.make_companies(url)
        with load.Server(url, tmp / "seed.log") as srv:
            pid = load.seed(srv.base, a, b, args.accounts, 0.2, 1)
            reqs = load.build_requests(srv.base, a, b, pid, random.Random(1))
            auth = f"Bearer {a.keys['reader']}"
            path = f"/v1/partnerships/{pid}/reports/overlaps?limit=1000"
            export, export_rows = [], 0
            while True:
                export.append(("GET", path, auth, None))
                page = httpx.get(srv.base + path, headers={"Authorization": auth}).json()
                export_rows += len(page["items"])
                if not page["next_cursor"]:
                    break
                path = f"{path.split('&cursor=')[0]}&cursor={page['next_cursor']}"
        env = load.Server(url, tmp / "unused.log").env
        port = load._free_port()
        base = f"http://127.0.0.1:{port}"
        cmd = [
            *("valgrind", "--tool=callgrind", "--instr-atstart=no"),
            f"--callgrind-out-file={tmp}/cg.%p",
            *(str(load.BIN / "python"), str(load.BIN / "blindmap-server")),
            *("serve", "--port", str(port), "--no-migrate"),
        ]
        log = (tmp / "valgrind.log").open("wb")
        stack.callback(log.close)
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=log)
        try:
            deadline = time.monotonic() + 600
            while True:
                try:
                    if httpx.get(base + "/readyz", timeout=30).status_code == 200:
                        break
                except httpx.TransportError:
                    time.sleep(1)
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise SystemExit("the server did not start under valgrind")
            by_kind: dict[str, list[tuple]] = {"export": export}
            for kind, *req in reqs:
                by_kind.setdefault(kind, []).append(tuple(req))
            rng = random.Random(2)
            http = stack.enter_context(httpx.Client(base_url=base, timeout=300))
            for kind in args.kinds.split(","):
                todo = (
                    export
                    if kind == "export"
                    else [rng.choice(by_kind[kind]) for _ in range(args.n)]
                )
                for counted, batch in ((False, todo[:3]), (True, todo)):  # a short warm-up first
                    if counted:
                        _control("-z", str(proc.pid))
                        _control("-i", "on", str(proc.pid))
                    for method, path, auth, body in batch:
                        headers = {"Authorization": auth, "content-type": "application/json"}
                        r = http.request(method, path, headers=headers, content=body)
                        if r.status_code != 200:
                            raise SystemExit(f"{kind}: {r.status_code} {r.text[:300]}")
                _control("-i", "off", str(proc.pid))
                _control("-d", kind, str(proc.pid))
                total = _instructions(tmp)
                if kind == "export":
                    res["export_per_row_thousands"] = round(total / export_rows / 1e3, 2)
                else:
                    res[kind] = round(total / len(todo) / 1e6, 3)
                print(f"[callgrind] {kind}: {res}", flush=True)
        finally:
            proc.terminate()
            proc.wait(120)
    print(json.dumps({"million_instructions_per_request": res}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
