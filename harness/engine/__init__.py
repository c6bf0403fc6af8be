"""The engine: one run, from a resolved config to its rows (config, model and experts, the
training loop, evaluation, run metrics, throughput, checkpoints, CPU threads, live logs)."""
