"""Normalization throughput on messy CRM rows (`python -m bench normalize --rows 1000000`).

Rows come from `bench.datagen` (seeded): websites with schemes, paths, ports, emails,
typos, IDNs, free-mail and platform URLs, blanks and multi-value cells; names with legal
forms from many countries. Caches are cleared before each measurement, so repeated values
within the run are the only cache hits (as in a real CRM export). Single-process numbers
first (the one-core target is 100k domain values/s), then `--procs` worker processes
(wall clock, results pickled back). The last line is a markdown table row for BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import gc
import multiprocessing as mp
import os
import platform
import time
from collections.abc import Callable, Sequence

from bench.datagen import generate_accounts
from blindmap import normalize

_CHUNK = 20_000


def _clear_caches() -> None:
    normalize.domain_with_reason.cache_clear()
    normalize.name_with_reason.cache_clear()
    normalize._classify_host.cache_clear()


def _domains(values: Sequence[str]) -> list[str | None]:
    domain = normalize.domain
    return [domain(v) for v in values]


def _names(values: Sequence[str]) -> list[str | None]:
    name = normalize.name
    return [name(v) for v in values]


def _both(pairs: Sequence[tuple[str, str]]) -> list[tuple[str | None, str | None]]:
    domain, name = normalize.domain, normalize.name
    return [(domain(w), name(n)) for w, n in pairs]


def _timed(label: str, n: int, fn: Callable[[], object]) -> float:
    _clear_caches()
    start = time.perf_counter()
    fn()
    elapsed = time.perf_counter() - start
    rate = n / elapsed
    print(f"  {label:<40} {rate:>12,.0f} values/s  {elapsed:7.2f} s", flush=True)
    return rate


def _parallel(procs: int, pairs: list[tuple[str, str]]) -> Callable[[], object]:
    chunks = [pairs[i : i + _CHUNK] for i in range(0, len(pairs), _CHUNK)]

    def run() -> object:
        with mp.get_context("fork").Pool(procs) as pool:
            return pool.map(_both, chunks)

    return run


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench normalize")
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--procs", type=int, default=min(2, os.cpu_count() or 1))
    args = parser.parse_args(argv)

    start = time.perf_counter()
    accounts = generate_accounts(args.rows, seed=args.seed)
    websites = [a.website for a in accounts]
    names = [a.name for a in accounts]
    pairs = list(zip(websites, names, strict=True))
    # A million live Account objects make every full GC pass slow; a real sync streams rows
    # from a CSV instead, so move the generated data out of the collector's way.
    gc.collect()
    gc.freeze()
    print(
        f"  {args.rows:,} generated rows ({len(set(websites)):,} distinct websites) in "
        f"{time.perf_counter() - start:.1f} s; {normalize.NORMALIZER_VERSION}; "
        f"Python {platform.python_version()}, {os.cpu_count()} CPUs",
        flush=True,
    )

    domain_rate = _timed("domain, 1 process", args.rows, lambda: _domains(websites))
    batch_rate = _timed(
        "domains_with_reason (sync's batch path)",
        args.rows,
        lambda: normalize.domains_with_reason(websites),
    )
    name_rate = _timed("name, 1 process", args.rows, lambda: _names(names))
    both_rate = _timed("domain + name per row, 1 process", args.rows, lambda: _both(pairs))
    par_rate = _timed(
        f"domain + name per row, {args.procs} processes", args.rows, _parallel(args.procs, pairs)
    )

    _clear_caches()
    correct = sum(normalize.domain(a.website) == a.expected_domain for a in accounts)
    keyed = sum(a.expected_domain is not None for a in accounts)
    print(f"  accuracy vs ground truth: {correct / args.rows:.4%} ({keyed:,} rows with a domain)")
    cells = [
        "normalize",
        f"{args.rows:,} rows",
        f"domain {domain_rate:,.0f}/s (batch {batch_rate:,.0f}/s)",
        f"name {name_rate:,.0f}/s",
        f"row (domain+name) {both_rate:,.0f}/s",
        f"row x{args.procs} procs {par_rate:,.0f}/s",
    ]
    print("| " + " | ".join(cells) + " |")
