"""Batched augmentation on the device, after the loader: the official train recipe on tensors.

Loaders yield uint8 `B, 3, H, W` batches. `TrainTransform` applies, per sample, timm's RandAugment
(`sgformer.augment.rand_augment`: timm parses the spec and its sampling is reproduced per image, the
ops run on whole groups of images), then normalises, then random erasing (timm's pixel mode,
batched) and timm `Mixup`/CutMix with label smoothing on the whole batch. `EvalTransform` only
normalises. All randomness of batch `index` comes from `seed + index`, so the same batches give the
same output whatever else uses the global generators, and a resumed run continues the sequence.
Every step dispatches the same number of ops whatever the batch size (no per-image loop).
"""
import math
import random
from contextlib import contextmanager

import numpy as np
import torch
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD, Mixup

from ..config import Augment
from .rand_augment import BatchRandAugment


def normalize(images: torch.Tensor, mean=IMAGENET_DEFAULT_MEAN, std=IMAGENET_DEFAULT_STD) -> torch.Tensor:
    """uint8 `B, 3, H, W` (values 0-255) -> float32, normalised per channel, on the same device."""
    mean = torch.tensor(mean, device=images.device).view(1, -1, 1, 1) * 255
    std = torch.tensor(std, device=images.device).view(1, -1, 1, 1) * 255
    return (images.float() - mean) / std


@contextmanager
def seeded(seed: int, device: torch.device):
    """Run a block with python, numpy and torch (CPU and `device`) generators seeded, then restore them."""
    py_state, np_state = random.getstate(), np.random.get_state()
    devices = [device] if device.type == 'cuda' else []
    with torch.random.fork_rng(devices=devices):
        random.seed(seed)
        np.random.seed(seed % 2 ** 32)
        torch.manual_seed(seed)
        try:
            yield
        finally:
            random.setstate(py_state)
            np.random.set_state(np_state)


class BatchRandomErasing:
    """timm's `RandomErasing(mode='pixel', max_count=1)` for a whole normalised batch at once.

    Each image is erased with probability `probability`: a rectangle of area 2-33 % and log-uniform
    aspect ratio 0.3-3.3 (up to 10 tries to fit, as timm), filled with standard-normal noise. The
    rectangles are drawn on the host for all images together and applied as one masked select.
    """

    ATTEMPTS, MIN_AREA, MAX_AREA, LOG_RATIO = 10, 0.02, 1 / 3, (math.log(0.3), math.log(1 / 0.3))

    def __init__(self, probability: float):
        self.probability = probability

    def boxes(self, batch: int, height: int, width: int) -> torch.Tensor:
        """`B, 4` int64 (top, left, height, width) per image; height 0 where nothing is erased."""
        area = height * width * torch.empty(batch, self.ATTEMPTS).uniform_(self.MIN_AREA, self.MAX_AREA)
        ratio = torch.exp(torch.empty(batch, self.ATTEMPTS).uniform_(*self.LOG_RATIO))
        h = torch.sqrt(area * ratio).round().long()
        w = torch.sqrt(area / ratio).round().long()
        fits = (h < height) & (w < width)
        first = torch.where(fits.any(1), fits.int().argmax(1), 0)  # timm takes the first try that fits
        h, w = h.gather(1, first[:, None])[:, 0], w.gather(1, first[:, None])[:, 0]
        erase = fits.any(1) & (torch.rand(batch) < self.probability)
        top = (torch.rand(batch) * (height - h + 1).clamp(min=1)).long()
        left = (torch.rand(batch) * (width - w + 1).clamp(min=1)).long()
        return torch.stack([top, left, h * erase, w * erase], dim=1)

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        B, _, H, W = images.shape
        boxes = self.boxes(B, H, W)
        if images.device.type == 'cuda':
            boxes = boxes.pin_memory().to(images.device, non_blocking=True)
        top, left, h, w = boxes.T.view(4, B, 1, 1, 1)
        rows = torch.arange(H, device=images.device).view(1, 1, H, 1)
        cols = torch.arange(W, device=images.device).view(1, 1, 1, W)
        inside = (rows >= top) & (rows < top + h) & (cols >= left) & (cols < left + w)
        return torch.where(inside, torch.randn_like(images), images)


class TrainTransform:
    """RandAugment -> normalise -> random erasing -> mixup/cutmix, on uint8 batches; seeded.

    Args:
        augment: the variant's augmentation settings.
        num_classes: classes of the labels (for the mixed, smoothed targets).
        seed: batch `index` draws its randomness from `seed + index`.
        device: where the batches live.
    """

    def __init__(self, augment: Augment, *, num_classes: int, seed: int, device: torch.device):
        self.device = torch.device(device)
        self.rand_augment = BatchRandAugment(augment.auto_augment) if augment.auto_augment else None
        self.erase = BatchRandomErasing(augment.reprob) if augment.reprob > 0 else None
        self.mix = (Mixup(mixup_alpha=augment.mixup, cutmix_alpha=augment.cutmix, label_smoothing=augment.smoothing,
                          num_classes=num_classes) if augment.mixing else None)
        self.num_classes, self.smoothing, self.seed = num_classes, augment.smoothing, seed

    def __call__(self, images: torch.Tensor, labels: torch.Tensor, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        """uint8 `B, 3, H, W` and int labels `B` of batch `index` -> normalised float images and soft
        targets `B, num_classes`."""
        with seeded(self.seed + index, self.device):
            if self.rand_augment is not None:
                images = self.rand_augment(images)
            images = normalize(images)
            if self.erase is not None:
                images = self.erase(images)
            if self.mix is not None:
                return self.mix(images, labels)
        off = self.smoothing / self.num_classes
        targets = torch.full((len(labels), self.num_classes), off, device=images.device)
        return images, targets.scatter_(1, labels.view(-1, 1).long(), 1 - self.smoothing + off)


class EvalTransform:
    """Normalise a uint8 batch; labels pass through."""

    def __call__(self, images: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return normalize(images), labels
