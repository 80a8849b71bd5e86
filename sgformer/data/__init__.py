"""Batches: FFCV / folder loaders and the batched augmentation that runs on the device."""
