"""Benchmarks: each prints one JSON document and compares against a baseline of the same run."""
