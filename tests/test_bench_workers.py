"""The end-to-end benchmark's worker processes (bench/bench_e2e.py)."""

from __future__ import annotations

import os
import pickle
import sys
import threading
from pathlib import Path

import pytest

from bench import bench_e2e
from bench import bench_ingest as bi

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="reads /proc")


def _children_cmdlines(parent: int) -> list[bytes]:
    out = []
    for pid in bi._children(parent):
        try:
            out.append(Path(f"/proc/{pid}/cmdline").read_bytes())
        except OSError:
            continue  # gone meanwhile
    return out


def test_worker_spec_is_not_on_the_command_line(tmp_path: Path) -> None:
    """Workers get API keys and private keys in their spec: it must reach them on stdin,
    not in argv, which every user of the machine can read (`ps`)."""
    csv = tmp_path / "a.csv"
    csv.write_text("Id,Name,Website\n1,Acme,acme.com\n2,Globex,https://www.globex.de/x\n")
    out = tmp_path / "rows.pickle"
    marker = "secret-marker-4f1c"
    seen: list[bytes] = []
    done = threading.Event()

    def watch() -> None:
        while not done.is_set():
            seen.extend(_children_cmdlines(os.getpid()))
            done.wait(0.005)

    t = threading.Thread(target=watch)
    t.start()
    try:
        res = bench_e2e.run_worker("plain_read", csv=str(csv), out=str(out), private_key=marker)
    finally:
        done.set()
        t.join()
    assert any(b"--worker" in c for c in seen), "the watcher never saw the worker"
    assert not any(marker.encode() in c for c in seen)
    assert res["read_s"] >= 0
    rows = pickle.loads(out.read_bytes())
    assert sorted(r[0] for r in rows) == ["acme.com", "globex.de"]
