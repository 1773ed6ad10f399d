"""The benchmarks' CPU accounting (bench/bench_ingest.py): it must see CPU being spent."""

from __future__ import annotations

import os
import sys
import time

import pytest

from bench import bench_ingest as bi
from tests.conftest import IN_CI

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="reads /proc")


def _spin(seconds: float) -> None:
    end = time.process_time() + seconds
    while time.process_time() < end:
        pass


def test_machine_and_process_cpu_grow_with_work() -> None:
    m0, p0 = bi.machine_cpu_s(), bi.proc_cpu_s(os.getpid())
    _spin(0.3)
    m1, p1 = bi.machine_cpu_s(), bi.proc_cpu_s(os.getpid())
    assert m0 is not None and m1 is not None
    assert p1 - p0 >= 0.2
    assert m1.busy - m0.busy >= 0.2
    assert m1.idle >= m0.idle


def test_pg_server_cpu_counts_live_and_exited_backends() -> None:
    import psycopg

    if why := bi.pg_unavailable():
        if IN_CI:
            pytest.fail(f"PostgreSQL not reachable: {why} (CI=true)", pytrace=False)
        pytest.skip(f"PostgreSQL not reachable: {why}")
    assert bi.pg_server_pid("sqlite:///nowhere.db") is None
    with psycopg.connect(bi._pg_admin(), autocommit=True) as conn:
        pid = bi.pg_server_pid(conn)
        if pid is None:
            pytest.skip("PostgreSQL's processes are not visible in this /proc")
        assert bi.pg_server_pid(bi._pg_admin()) == pid
        backend = conn.execute("SELECT pg_backend_pid()").fetchone()[0]  # type: ignore[index]
        before = bi.pg_server_cpu_s(pid)
        # at least 0.6 s of work in this backend, however fast the machine (one query
        # took 0.28-1.5 s on the machines we have seen)
        t0 = time.perf_counter()
        while time.perf_counter() - t0 < 0.6:
            conn.execute("SELECT count(*) FROM generate_series(1, 2000000) g WHERE g % 7 = 1")
        during = bi.pg_server_cpu_s(pid)
    assert before is not None and during is not None
    # a live backend's CPU counts
    assert during - before >= 0.3, (before, during)
    # once it disconnects, its CPU moves to the postmaster's cutime and still counts
    deadline = time.monotonic() + 5
    while bi._comm(backend) == "postgres" and time.monotonic() < deadline:
        time.sleep(0.02)
    after = bi.pg_server_cpu_s(pid)
    assert after is not None and after >= during - 0.02, (during, after)
