"""Benchmarks, sweeps, the fault bench, the demo, diagnostics: run by people, not by a robot."""
