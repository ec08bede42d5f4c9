"""Benchmarks and the synthetic data generator (DESIGN §10). Run them all with `bench/run`."""
