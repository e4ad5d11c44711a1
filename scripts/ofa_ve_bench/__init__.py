"""Measurement: benchmarks, load tests, soak, GPU check (never imported by serving code)."""
