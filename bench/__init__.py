"""Benchmarks: each writes bench/results/<name>.json and its own section of docs/benchmarks.md."""
