"""Benchmarks: print JSON, never assert timings (tests check correctness, benchmarks check speed)."""
