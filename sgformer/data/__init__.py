"""Data: the sample generator, the beton writer, FFCV/folder loaders and batched augmentation."""
