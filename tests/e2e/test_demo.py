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
        timeout=120,
        env=env,
        cwd=tmp_path,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "Demo complete" in proc.stdout
    assert "Acme Analytics (acme)" in proc.stdout and "Globex Cloud (globex)" in proc.stdout
    assert "stopped cleanly" in proc.stdout
    assert (tmp_path / "demo" / "escrow.db").exists()
