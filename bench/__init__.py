"""Benchmarks of powertrain (see bench/README.md)."""
