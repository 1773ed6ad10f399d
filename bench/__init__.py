"""Benchmarks run by `make bench` (see BENCHMARKS.md)."""
