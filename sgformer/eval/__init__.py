"""Evaluation helpers: FLOPs, throughput, accuracy, pictures."""
