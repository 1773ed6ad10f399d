"""Client pipeline throughput per record (`python -m bench pipeline --rows 1000000`).

The work `blindmap sync` does for every CRM row before anything is sent (issue 3, item 6):
normalize the website to a domain key, the domain token, the pseudonymous ref, the
partner-sealed payload and the self-sealed copy — through the public APIs of
`blindmap.normalize` and `blindmap.crypto` only. Rows come from `bench.datagen` (seeded,
messy); rows without a domain key (blank, free-mail, platform, ...) are skipped after
normalization, as sync skips them.

First each stage alone on one core (its own rate, in values per second), then the fused
per-row pipeline on one core, then the same pipeline over `--procs` worker processes
(fork; a warm pool; wall clock including pickling the results back to the parent). An
extra line shows what NDJSON line encoding (base64url + JSON text, as sync writes it)
adds: it is part of a real upload but not of the issue's pipeline definition.

Targets (one core): tokens >= 500k/s, normalization >= 100k/s, pipeline >= 50k records/s.
The last line is a markdown table row for BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import base64
import gc
import multiprocessing as mp
import os
import platform
import time
import uuid
from collections.abc import Callable, Sequence
from typing import Any

from bench.datagen import generate_accounts
from blindmap import crypto, normalize

_CHUNK = 20_000  # rows per task handed to a worker process

# (local_id, website, name, owner_email, stage) per row; set before the pool forks.
Row = tuple[str, str, str, str, str]
_ROWS: list[Row] = []
_KEYS: dict[str, Any] = {}


def _clear_caches() -> None:
    normalize.domain_with_reason.cache_clear()
    normalize.name_with_reason.cache_clear()
    normalize._classify_host.cache_clear()


def _setup_keys() -> None:
    a, b = crypto.generate_private_key(), crypto.generate_private_key()
    pid = uuid.uuid4()
    keys = crypto.PartnershipKeys.derive(a, crypto.public_key_bytes(b), pid)
    # the other side derives the same tokens: a cheap sanity check of the setup
    other = crypto.PartnershipKeys.derive(b, crypto.public_key_bytes(a), pid)
    assert keys.tokenizer("domain").token("acme.com") == other.tokenizer("domain").token("acme.com")
    sk = crypto.self_key(a)
    _KEYS.update(pid=pid, keys=keys, self_key=sk)


Out = tuple[str, bytes, bytes, bytes]  # ref, domain token, self-sealed, partner-sealed


def pipeline(rows: Sequence[Row]) -> list[Out]:
    """normalize + domain token + ref + partner seal + self seal for a batch of rows."""
    pid: uuid.UUID = _KEYS["pid"]
    keys: crypto.PartnershipKeys = _KEYS["keys"]
    domain = normalize.domain
    kept = [(r, d) for r in rows if (d := domain(r[1])) is not None]
    toks = keys.tokenizer("domain").tokens(d for _, d in kept)
    refs = crypto.RefMaker(_KEYS["self_key"], pid).refs(r[0] for r, _ in kept)
    p_seal, s_seal = keys.sealer().seal, crypto.Sealer(_KEYS["self_key"]).seal
    p_aad, s_aad = crypto.partner_aad, crypto.self_aad
    out: list[Out] = []
    append = out.append
    for i, (r, d) in enumerate(kept):
        ref = refs[i]
        partner = p_seal(p_aad(pid, ref), {"name": r[2], "owner_email": r[3], "stage": r[4]})
        mine = s_seal(s_aad(pid, ref), {"domain": d, "id": r[0], "name": r[2]})
        append((ref, toks[i], mine, partner))
    return out


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def ndjson_lines(out: Sequence[Out]) -> list[bytes]:
    """The NDJSON line per record, the way `blindmap.sync` writes it."""
    return [
        (
            f'{{"ref":"{ref}","tokens":[{{"kind":"domain","value":"{_b64(tok)}"}}],'
            f'"self":"{_b64(s)}","partner":"{_b64(p)}"}}\n'
        ).encode("ascii")
        for ref, tok, s, p in out
    ]


def _task(bounds: tuple[int, int]) -> list[Out]:
    return pipeline(_ROWS[bounds[0] : bounds[1]])


def _timed(label: str, n: int, fn: Callable[[], Any], unit: str = "/s") -> tuple[float, Any]:
    gc.collect()
    start = time.perf_counter()
    result = fn()
    elapsed = time.perf_counter() - start
    rate = n / elapsed
    print(f"  {label:<52} {rate:>12,.0f} {unit:<10} {elapsed:7.2f} s", flush=True)
    return rate, result


def sync_stages(path: str) -> None:
    """CPU seconds of `blindmap sync`'s own client stages on a CSV, in this process:
    `read_accounts` (read + normalize + dedupe) and `build_upload` (refs, tokens, both
    seals, binary chunks) with the co-sell policy's customer fields, one process each."""
    from blindmap import sync as bsync

    start = time.process_time()
    read = bsync.read_accounts(path, population="customers", jobs=1)
    read_s = time.process_time() - start
    kept = len(read.accounts["customers"])
    print(f"  read+normalize  {read_s:6.2f} CPU-s  {read.rows_read:,} rows, {kept:,} kept")
    _setup_keys()
    sealed = [f for f in ("name", "owner_email") if f in read.available_fields()]
    start = time.process_time()
    chunks = bsync.build_upload(
        read, "customers", keys=_KEYS["keys"], self_key=_KEYS["self_key"],
        sealed_fields=sealed, chunk_format="binary", jobs=1,
    )  # fmt: skip
    records = sum(c.records for c in chunks)
    build_s = time.process_time() - start
    print(f"  build           {build_s:6.2f} CPU-s  {records:,} records, sealed {sealed}")


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench pipeline")
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--procs", type=int, default=min(2, os.cpu_count() or 1))
    parser.add_argument("--quick", action="store_true", help="100k rows (a smoke run)")
    parser.add_argument(
        "--csv", help="instead: CPU seconds of sync's read and build stages on this CSV file"
    )
    args = parser.parse_args(argv)
    if args.csv:
        sync_stages(args.csv)
        return
    n = 100_000 if args.quick else args.rows

    start = time.perf_counter()
    accounts = generate_accounts(n, seed=args.seed)
    _ROWS[:] = [(a.local_id, a.website, a.name, a.owner_email, a.stage) for a in accounts]
    del accounts
    _setup_keys()
    # A million live rows make every full GC pass slow; a real sync streams them from a
    # CSV instead, so move the generated data out of the collector's way.
    gc.collect()
    gc.freeze()
    print(
        f"  {n:,} generated rows in {time.perf_counter() - start:.1f} s; "
        f"{normalize.NORMALIZER_VERSION}; Python {platform.python_version()}, "
        f"{os.cpu_count()} CPUs, load {os.getloadavg()[0]:.2f}",
        flush=True,
    )
    rows = _ROWS
    pid, keys, sk = _KEYS["pid"], _KEYS["keys"], _KEYS["self_key"]

    print("one process, stage by stage:")
    _clear_caches()
    domain = normalize.domain
    norm_rate, domains = _timed(
        "normalize.domain(website)", n, lambda: [domain(r[1]) for r in rows], "rows/s"
    )
    kept = [(r, d) for r, d in zip(rows, domains, strict=True) if d is not None]
    m = len(kept)
    print(f"  ({m:,} of {n:,} rows have a domain key; the stages below run on those)")
    kept_domains = [d for _, d in kept]
    tokenizer = keys.tokenizer("domain")
    tok_rate, _ = _timed(
        "domain token (Tokenizer.tokens)", m, lambda: tokenizer.tokens(kept_domains)
    )
    refmaker = crypto.RefMaker(sk, pid)
    ref_rate, refs = _timed("pseudonymous ref (RefMaker.refs)", m,
                            lambda: refmaker.refs(r[0] for r, _ in kept))  # fmt: skip
    p_seal, p_aad = keys.sealer().seal, crypto.partner_aad
    s_seal, s_aad = crypto.Sealer(sk).seal, crypto.self_aad
    pseal_rate, psealed = _timed(
        "partner seal (name, owner_email, stage)",
        m,
        lambda: [
            p_seal(p_aad(pid, refs[i]), {"name": r[2], "owner_email": r[3], "stage": r[4]})
            for i, (r, _) in enumerate(kept)
        ],
    )
    sseal_rate, ssealed = _timed(
        "self seal (domain, id, name)",
        m,
        lambda: [
            s_seal(s_aad(pid, refs[i]), {"domain": d, "id": r[0], "name": r[2]})
            for i, (r, d) in enumerate(kept)
        ],
    )
    stage_time = n / norm_rate + m * (1 / tok_rate + 1 / ref_rate + 1 / pseal_rate + 1 / sseal_rate)
    print(f"  {'sum of the stages':<52} {m / stage_time:>12,.0f} records/s  {stage_time:7.2f} s")
    outs = list(zip(refs, tokenizer.tokens(kept_domains), ssealed, psealed, strict=True))
    del psealed, ssealed, domains
    nd_rate, _ = _timed("extra: NDJSON line encoding (base64url)", m, lambda: ndjson_lines(outs))
    outs.clear()

    print("one process, fused pipeline (what sync does per row):")
    _clear_caches()
    one_rate, out = _timed("normalize+token+ref+seal+seal", n, lambda: pipeline(rows), "rows/s")
    assert len(out) == m
    one_rec = one_rate * m / n
    print(f"  {'  = uploaded records':<52} {one_rec:>12,.0f} records/s")
    del out

    par_rate = par_rec = 0.0
    if args.procs > 1:
        print(f"{args.procs} processes, fused pipeline (fork, warm pool, results pickled back):")
        _clear_caches()
        tasks = [(i, min(i + _CHUNK, n)) for i in range(0, n, _CHUNK)]
        with mp.get_context("fork").Pool(args.procs) as pool:
            pool.map(_task, [(0, 10)] * args.procs)  # warm up
            par_rate, results = _timed(
                "normalize+token+ref+seal+seal", n, lambda: pool.map(_task, tasks), "rows/s"
            )
        assert sum(map(len, results)) == m
        del results
        par_rec = par_rate * m / n
        print(f"  {'  = uploaded records':<52} {par_rec:>12,.0f} records/s")

    def verdict(value: float, target: float) -> str:
        return f"{value:,.0f}/s ({'met' if value >= target else 'MISSED'}, target {target:,.0f})"

    print("targets (one core):")
    print(f"  tokens        {verdict(tok_rate, 500_000)}")
    print(f"  normalization {verdict(norm_rate, 100_000)}")
    print(f"  pipeline      {verdict(one_rate, 50_000)} rows; {one_rec:,.0f} records/s")
    cells = [
        "pipeline",
        f"{n:,} rows ({m:,} records)",
        f"normalize {norm_rate:,.0f}/s",
        f"token {tok_rate:,.0f}/s",
        f"ref {ref_rate:,.0f}/s",
        f"partner seal {pseal_rate:,.0f}/s",
        f"self seal {sseal_rate:,.0f}/s",
        f"ndjson {nd_rate:,.0f}/s",
        f"pipeline x1 {one_rate:,.0f} rows/s",
        f"pipeline x{args.procs} {par_rate:,.0f} rows/s",
    ]
    print("| " + " | ".join(cells) + " |")


if __name__ == "__main__":  # pragma: no cover
    import sys

    main(sys.argv[1:])
