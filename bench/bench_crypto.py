"""Client-side crypto throughput: tokens, seals, refs (`python -m bench crypto --n 1000000`).

Single-process numbers first (the issue's one-core targets), then the same work split
over `--procs` worker processes (wall clock, including pickling results back).
"""

from __future__ import annotations

import argparse
import hashlib
import hmac
import multiprocessing as mp
import os
import platform
import time
import uuid
from collections.abc import Callable, Sequence
from typing import Any

from blindmap import crypto

_WORDS = ["acme", "globex", "initech", "umbrella", "hooli", "stark", "wayne", "wonka", "tyrell"]
_TLDS = ["com", "de", "co.uk", "io", "fr", "com.au", "xn--p1ai", "net"]
_STAGES = ["Prospecting", "Qualification", "Proposal", "Closed Won", "Closed Lost"]


def gen_domains(n: int) -> list[str]:
    """Normalized registrable domains of realistic length (10-25 chars)."""
    return [f"{_WORDS[i % 9]}-{i:x}.{_TLDS[i % 8]}" for i in range(n)]


def gen_local_ids(n: int) -> list[str]:
    return [f"0015g00000{i:08X}AAA" for i in range(n)]


def gen_fields(i: int) -> dict[str, Any]:
    w = _WORDS[i % 9]
    return {
        "name": f"{w.title()} Holdings {i}",
        "owner_email": f"rep{i % 997}@{w}.example",
        "stage": _STAGES[i % 5],
    }


def _rate(label: str, n: int, fn: Callable[[], object], base: float | None = None) -> float:
    t0 = time.perf_counter()
    fn()
    dt = time.perf_counter() - t0
    rate = n / dt
    extra = f"  ({rate / base:.2f}x)" if base else ""
    print(f"  {label:<44} {rate:>12,.0f} /s  {dt:7.2f} s{extra}", flush=True)
    return rate


# ---------------------------------------------------------------- work functions
# Module-level so multiprocessing can pickle them; each takes (key material, chunk).


def _tokens_fresh(key: bytes, values: Sequence[str]) -> list[bytes]:
    new, sha = hmac.new, hashlib.sha256
    return [new(key, v.encode(), sha).digest()[:16] for v in values]


def _tokens_hmac_copy(key: bytes, values: Sequence[str]) -> list[bytes]:
    base = hmac.new(key, digestmod="sha256")
    out = []
    for v in values:
        h = base.copy()
        h.update(v.encode())
        out.append(h.digest()[:16])
    return out


def _tokens_fast(key: bytes, values: Sequence[str]) -> list[bytes]:
    return crypto.Tokenizer(key).tokens(values)


def _refs(args: tuple[bytes, uuid.UUID], ids: Sequence[str]) -> list[str]:
    return crypto.RefMaker(*args).refs(ids)


def _refs_one_shot(args: tuple[bytes, uuid.UUID], ids: Sequence[str]) -> list[str]:
    sk, pid = args
    return [crypto.pseudonymous_ref(sk, pid, i) for i in ids]


def _seal_partner(args: tuple[bytes, uuid.UUID], ids: Sequence[str]) -> list[bytes]:
    key, pid = args
    sealer = crypto.Sealer(key)
    return [sealer.seal(crypto.partner_aad(pid, r), gen_fields(j)) for j, r in enumerate(ids)]


def _seal_self(args: tuple[bytes, uuid.UUID], ids: Sequence[str]) -> list[bytes]:
    key, pid = args
    sealer = crypto.Sealer(key)
    return [
        sealer.seal(crypto.self_aad(pid, r), {"local_id": r, "row": j}) for j, r in enumerate(ids)
    ]


def _seal_new_aead_each(args: tuple[bytes, uuid.UUID], ids: Sequence[str]) -> list[bytes]:
    key, pid = args
    return [crypto.seal(key, crypto.partner_aad(pid, r), gen_fields(j)) for j, r in enumerate(ids)]


def _star(job: tuple[Callable[[Any, Sequence[str]], list[Any]], Any, Sequence[str]]) -> list[Any]:
    fn, arg, chunk = job
    return fn(arg, chunk)


def _parallel(pool: Any, procs: int, fn: Any, arg: Any, data: Sequence[str]) -> None:
    # Several chunks per worker so a slow start-up of one worker does not dominate.
    size = max(1, len(data) // (procs * 4))
    jobs = [(fn, arg, data[i : i + size]) for i in range(0, len(data), size)]
    assert sum(len(r) for r in pool.map(_star, jobs)) == len(data)


def decrypt_rows(n: int) -> None:
    """CPU time of `reports.decrypt_overlaps` on `n` overlap rows (one self and one
    partner payload each, as pages deliver them), best of 3."""
    from blindmap import protocol, reports

    a, b = crypto.generate_private_key(), crypto.generate_private_key()
    pid = uuid.uuid4()
    theirs = crypto.PartnershipKeys.derive(b, crypto.public_key_bytes(a), pid).sealer()
    mine = crypto.Sealer(crypto.self_key(a))
    items = []
    for i in range(n):
        ref, pref = f"{i:032x}", f"{i + 1:032x}"
        own = {"domain": f"co{i}.com", "id": f"001x{i}", "name": f"Co {i}", "population": "c"}
        shared = {"name": f"Other {i}", "owner_email": "x@y.example"}
        raw = {
            "ref": ref,
            "population": "customers",
            "self_sealed": protocol.b64url(mine.seal(crypto.self_aad(pid, ref), own)),
            "partner": [
                {
                    "population": "customers",
                    "ref": pref,
                    "sealed": protocol.b64url(theirs.seal(crypto.partner_aad(pid, pref), shared)),
                    "fields": ["name", "owner_email"],
                }
            ],
        }
        items.append(protocol.OverlapItem.model_validate(raw))
    keys = reports.ReportKeys(a, pid, crypto.public_key_bytes(b))
    best = float("inf")
    for _ in range(3):
        start = time.process_time()
        rows = reports.decrypt_overlaps(keys, items)
        best = min(best, time.process_time() - start)
    assert all(r.mine.decrypted and r.partner[0].status == "ok" for r in rows)
    print(f"  decrypt_overlaps  {best:6.2f} CPU-s  {n:,} rows  {best / n * 1e6:.2f} us/row")


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench crypto")
    parser.add_argument("--n", type=int, default=1_000_000, help="values per measurement")
    parser.add_argument("--procs", type=int, default=2, help="worker processes (0: skip)")
    parser.add_argument(
        "--decrypt", type=int, metavar="ROWS", help="instead: report decryption of ROWS rows"
    )
    args = parser.parse_args(argv)
    if args.decrypt:
        decrypt_rows(args.decrypt)
        return
    n = args.n

    a, b = crypto.generate_private_key(), crypto.generate_private_key()
    pid = uuid.uuid4()
    keys = crypto.PartnershipKeys.derive(a, crypto.public_key_bytes(b), pid)
    token_key, seal_key, sk = keys.key("match/domain"), keys.key("seal"), crypto.self_key(a)
    domains, ids = gen_domains(n), gen_local_ids(n)
    refs = crypto.RefMaker(sk, pid).refs(ids)
    assert _tokens_fast(token_key, domains[:1000]) == _tokens_fresh(token_key, domains[:1000])

    print(
        f"crypto bench: n={n:,}  python {platform.python_version()}  "
        f"{platform.machine()}  cpus={os.cpu_count()}",
        flush=True,
    )
    print("one process:")
    fresh = _rate("token: fresh hmac.new per value", n, lambda: _tokens_fresh(token_key, domains))
    _rate("token: hmac.new(key).copy() per value", n,
          lambda: _tokens_hmac_copy(token_key, domains), fresh)  # fmt: skip
    _rate("token: Tokenizer.tokens (pre-fed sha256)", n,
          lambda: _tokens_fast(token_key, domains), fresh)  # fmt: skip
    one_ref = _rate("ref: pseudonymous_ref one-shot", n, lambda: _refs_one_shot((sk, pid), ids))
    _rate("ref: RefMaker.refs", n, lambda: _refs((sk, pid), ids), one_ref)
    m = min(n, 200_000)
    new_each = _rate(f"seal partner: new AESGCM per record (n={m:,})", m,
                     lambda: _seal_new_aead_each((seal_key, pid), refs[:m]))  # fmt: skip
    _rate("seal partner: Sealer reused (3 fields)", n,
          lambda: _seal_partner((seal_key, pid), refs), new_each)  # fmt: skip
    _rate("seal self: Sealer reused (2 fields)", n, lambda: _seal_self((sk, pid), refs))

    if args.procs > 1:
        procs = args.procs
        print(f"{procs} processes (wall clock, results returned to the parent):")
        with mp.get_context("spawn").Pool(procs) as pool:
            pool.map(_star, [(_tokens_fast, token_key, domains[:10])] * procs)  # warm up
            _rate("token: Tokenizer.tokens", n,
                  lambda: _parallel(pool, procs, _tokens_fast, token_key, domains))  # fmt: skip
            _rate("ref: RefMaker.refs", n,
                  lambda: _parallel(pool, procs, _refs, (sk, pid), ids))  # fmt: skip
            _rate("seal partner: Sealer reused", n,
                  lambda: _parallel(pool, procs, _seal_partner, (seal_key, pid), refs))  # fmt: skip
            _rate("seal self: Sealer reused", n,
                  lambda: _parallel(pool, procs, _seal_self, (sk, pid), refs))  # fmt: skip


if __name__ == "__main__":  # pragma: no cover
    import sys

    main(sys.argv[1:])
