"""Benchmarks run by `make bench`: each writes docs/benchmarks/<name>.json and .md with the command."""
