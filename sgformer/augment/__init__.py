"""Batch augmentation on the device: timm's RandAugment, random erasing, mixup/cutmix and normalisation, on whole uint8 batches."""
