"""`python -m bench [NAME ...]`: run the registered benchmarks (all by default)."""

from __future__ import annotations

import argparse
import importlib
import sys

# Each module exposes `main(argv: list[str]) -> None`; later issues add theirs here.
BENCHES: dict[str, str] = {
    "crypto": "bench.bench_crypto",
    "normalize": "bench.bench_normalize",
    "pipeline": "bench.bench_pipeline",
    "ingest": "bench.bench_ingest",
    "e2e": "bench.bench_e2e",
    "reports": "bench.bench_reports",
}


def main() -> None:
    # -h/--help goes to the named benchmark (`python -m bench e2e --help`), to this parser
    # only without a name
    parser = argparse.ArgumentParser(prog="python -m bench", add_help=False)
    parser.add_argument("names", nargs="*", help=f"benchmarks to run: {', '.join(BENCHES)}")
    args, rest = parser.parse_known_args()
    if not args.names and {"-h", "--help"} & set(rest):
        parser.print_help()
        print("\n`python -m bench NAME --help` shows a benchmark's options.")
        return
    # Without names: the end-to-end benchmark (issue 7) at $SIZE (make bench SIZE=1m);
    # the building-block benchmarks run when named (`make bench BENCH_ARGS="ingest"`).
    names = args.names or ["e2e"]
    if not names:
        print("no benchmarks registered yet")
        return
    for name in names:
        if name not in BENCHES:
            sys.exit(f"unknown benchmark {name!r}; known: {', '.join(BENCHES)}")
        print(f"== {name}", flush=True)
        importlib.import_module(BENCHES[name]).main(rest)


if __name__ == "__main__":
    main()
