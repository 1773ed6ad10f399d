"""`make demo` end to end: a real server process, the real CLIs, a clean stop."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path


def test_demo_runs_end_to_end(tmp_path):
    bin_dir = Path(sys.executable).parent
    env = {k: v for k, v in os.environ.items() if not k.startswith("BLINDMAP_")}
    proc = subprocess.run(
        [str(bin_dir / "blindmap-server"), "demo", "--workdir", str(tmp_path / "demo")],
        capture_output=True,
        text=True,
        timeout=180,
        env=env,
        cwd=tmp_path,
        check=False,
    )
    out = proc.stdout
    assert proc.returncode == 0, out[-4000:] + proc.stderr[-3000:]
    for expected in (
        "Verified the partnership with globex",
        "Account mapping",  # the matrix
        "Overlaps",  # co-sell overlaps
        "White space",
        "hash chain is intact",
        "stopped cleanly",
        "Demo complete",
    ):
        assert expected in out, expected
    assert "0 times in the escrow database" in out and " 1 times" not in out
    assert (tmp_path / "demo" / "escrow.db").exists()
