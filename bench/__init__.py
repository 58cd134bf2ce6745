"""Benchmarks (not tests): each prints its figures and writes them to docs/benchmarks.md."""
