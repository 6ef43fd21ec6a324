"""Tiny random ChartWiz models made offline (tests, benchmarks, trying the package), and merging a LoRA adapter into
its base."""
