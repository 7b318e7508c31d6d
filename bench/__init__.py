"""Benchmarks of slipway's pipeline flow against plain shell scripts (run ``bench/run``)."""
