"""Suites and sweeps: files that schedule many runs (suite and sweep files, the run queue of
workers, Optuna studies and their storages)."""
