"""Batched augmentation on the device, after the loader: the official train recipe on tensors.

Loaders yield uint8 `B, 3, H, W` batches. `TrainTransform` applies, per sample, timm's RandAugment
(`rand-m9-mstd0.5-inc1`: timm parses the spec and samples ops, probabilities and magnitudes; the
ops run as torchvision.transforms.v2 tensor functions), then normalises, then timm
`RandomErasing` (pixel mode) and timm `Mixup`/CutMix with label smoothing on the whole batch.
`EvalTransform` only normalises. All randomness comes from the transform's own seed, so the same
seed and the same batches give the same output, whatever else uses the global generators.
"""
import math
import random
from contextlib import contextmanager

import numpy as np
import torch
import torchvision.transforms.v2.functional as F
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD, Mixup
from timm.data.auto_augment import rand_augment_transform
from timm.data.random_erasing import RandomErasing

FILL = [round(255 * m) for m in IMAGENET_DEFAULT_MEAN]


def normalize(images: torch.Tensor, mean=IMAGENET_DEFAULT_MEAN, std=IMAGENET_DEFAULT_STD) -> torch.Tensor:
    """uint8 `B, 3, H, W` (values 0-255) -> float32, normalised per channel, on the same device."""
    mean = torch.tensor(mean, device=images.device).view(1, -1, 1, 1) * 255
    std = torch.tensor(std, device=images.device).view(1, -1, 1, 1) * 255
    return (images.float() - mean) / std


def _affine(image, angle=0.0, translate=(0, 0), shear=(0.0, 0.0)):
    return F.affine(image, angle=angle, translate=list(translate), scale=1.0, shear=list(shear), fill=FILL)


def _solarize_add(image, add, thresh=128):
    return torch.where(image < thresh, (image.int() + add).clamp(0, 255).to(image.dtype), image)


# timm op name -> the same operation on a uint8 CHW tensor, taking timm's level arguments
TENSOR_OPS = {
    'AutoContrast': lambda img: F.autocontrast(img),
    'Equalize': lambda img: F.equalize(img),
    'Invert': lambda img: F.invert(img),
    'Rotate': lambda img, deg: F.rotate(img, deg, fill=FILL),
    'PosterizeIncreasing': lambda img, bits: F.posterize(img, max(0, min(8, int(bits)))),
    'SolarizeIncreasing': lambda img, thresh: img if thresh > 255 else F.solarize(img, float(thresh)),
    'SolarizeAdd': _solarize_add,
    'ColorIncreasing': lambda img, f: F.adjust_saturation(img, f),
    'ContrastIncreasing': lambda img, f: F.adjust_contrast(img, f),
    'BrightnessIncreasing': lambda img, f: F.adjust_brightness(img, f),
    'SharpnessIncreasing': lambda img, f: F.adjust_sharpness(img, f),
    'ShearX': lambda img, f: _affine(img, shear=(math.degrees(math.atan(f)), 0.0)),
    'ShearY': lambda img, f: _affine(img, shear=(0.0, math.degrees(math.atan(f)))),
    'TranslateXRel': lambda img, pct: _affine(img, translate=(round(pct * img.shape[-1]), 0)),
    'TranslateYRel': lambda img, pct: _affine(img, translate=(0, round(pct * img.shape[-2]))),
}


class BatchRandAugment:
    """timm RandAugment applied independently to every image of a uint8 batch."""

    def __init__(self, spec: str = 'rand-m9-mstd0.5-inc1'):
        self.policy = rand_augment_transform(spec, dict(img_mean=tuple(FILL)))
        unknown = [op.name for op in self.policy.ops if op.name not in TENSOR_OPS]
        if unknown:
            raise ValueError(f'{spec}: no tensor version of {unknown}')

    def _apply_op(self, op, image: torch.Tensor) -> torch.Tensor:
        # the sampling below is timm's AugmentOp.__call__, with a tensor op in place of PIL
        if op.prob < 1.0 and random.random() > op.prob:
            return image
        magnitude = op.magnitude
        if op.magnitude_std == float('inf'):
            magnitude = random.uniform(0, magnitude)
        elif op.magnitude_std > 0:
            magnitude = random.gauss(magnitude, op.magnitude_std)
        magnitude = max(0.0, min(magnitude, op.magnitude_max or 10.0))
        args = op.level_fn(magnitude, op.hparams) if op.level_fn is not None else ()
        return TENSOR_OPS[op.name](image, *args)

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        out = images.clone()
        for i in range(len(out)):
            ops = np.random.choice(self.policy.ops, self.policy.num_layers, replace=self.policy.choice_weights is None,
                                   p=self.policy.choice_weights)
            for op in ops:
                out[i] = self._apply_op(op, out[i])
        return out


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


class TrainTransform:
    """RandAugment -> normalise -> random erasing -> mixup/cutmix, on uint8 batches; seeded.

    Args:
        num_classes: classes of the labels (for the mixed, smoothed targets).
        auto_augment: timm RandAugment spec, or None.
        reprob: random erasing probability (pixel mode).
        mixup: mixup alpha (0: off).
        cutmix: cutmix alpha (0: off).
        smoothing: label smoothing.
        seed: the seed of every random choice; call `n` of a transform uses `seed + n`.
        device: where the batches live.
    """

    def __init__(self, *, num_classes: int, auto_augment: str | None = 'rand-m9-mstd0.5-inc1', reprob: float = 0.25,
                 mixup: float = 0.8, cutmix: float = 1.0, smoothing: float = 0.1, seed: int = 0,
                 device: str | torch.device = 'cpu'):
        self.device = torch.device(device)
        self.rand_augment = BatchRandAugment(auto_augment) if auto_augment else None
        self.erase = RandomErasing(reprob, mode='pixel', device=self.device) if reprob > 0 else None
        self.mix = (Mixup(mixup_alpha=mixup, cutmix_alpha=cutmix, label_smoothing=smoothing, num_classes=num_classes)
                    if mixup > 0 or cutmix > 0 else None)
        self.num_classes, self.smoothing, self.seed, self.calls = num_classes, smoothing, seed, 0

    def __call__(self, images: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """uint8 `B, 3, H, W` and int labels `B` -> normalised float images and soft targets `B, num_classes`."""
        with seeded(self.seed + self.calls, self.device):
            self.calls += 1
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
