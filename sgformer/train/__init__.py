"""Training: distributed setup, FSDP2 parallelisation, optimizer / schedule / EMA, DCP checkpoints."""
