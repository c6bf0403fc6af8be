"""moe-harness: a benchmarking and ablation harness for MoE load balancing."""

__version__ = "0.1.0"
