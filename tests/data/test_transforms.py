"""Batched train augmentation: seeded, per sample, shapes and soft targets right."""
import random

import numpy as np
import torch

from sgformer.data.transforms import BatchRandAugment, EvalTransform, TrainTransform, normalize


def batch(n=8, size=48) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (n, 3, size, size), dtype=torch.uint8, generator=g)
    images[:, :, size // 4:size // 2] = 200  # some structure for the geometric ops to move
    return images, torch.arange(n) % 5


def test_same_seed_same_batch_other_seed_other_batch():
    images, labels = batch()
    a = TrainTransform(num_classes=5, seed=3)(images, labels)
    b = TrainTransform(num_classes=5, seed=3)(images, labels)
    c = TrainTransform(num_classes=5, seed=4)(images, labels)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(a[0], c[0])


def test_successive_calls_differ_and_global_rng_is_untouched():
    images, labels = batch()
    t = TrainTransform(num_classes=5, seed=0)
    torch.manual_seed(123)
    first = t(images, labels)[0]
    after = torch.rand(3)
    torch.manual_seed(123)
    assert torch.equal(torch.rand(3), after)
    assert not torch.equal(t(images, labels)[0], first)


def test_outputs_normalised_images_and_mixed_smoothed_targets():
    images, labels = batch()
    out, targets = TrainTransform(num_classes=5, seed=0)(images, labels)
    assert out.shape == images.shape and out.dtype == torch.float32
    assert targets.shape == (8, 5)
    torch.testing.assert_close(targets.sum(1), torch.ones(8))
    assert targets.max() <= 0.9 + 0.1 / 5 + 1e-6  # smoothing 0.1 caps the top class
    plain, _ = EvalTransform()(images, labels)
    torch.testing.assert_close(plain, normalize(images))
    assert abs(float(normalize(torch.full((1, 3, 2, 2), 124, dtype=torch.uint8))[0, 0].mean())) < 0.01


def test_rand_augment_changes_samples_independently():
    images, _ = batch(n=16)
    torch.manual_seed(0), np.random.seed(0), random.seed(0)
    out = BatchRandAugment('rand-m9-mstd0.5-inc1')(images)
    assert out.dtype == torch.uint8 and out.shape == images.shape
    changed = [not torch.equal(o, i) for o, i in zip(out, images)]
    assert 0 < sum(changed) <= 16
    diffs = {round(float((o.float() - i.float()).abs().mean()), 3) for o, i in zip(out, images)}
    assert len(diffs) > 4  # different ops / magnitudes per sample


def test_no_mixup_gives_smoothed_one_hot():
    images, labels = batch()
    _, targets = TrainTransform(num_classes=5, mixup=0, cutmix=0, smoothing=0.1, seed=0)(images, labels)
    assert torch.equal(targets.argmax(1), labels)
    torch.testing.assert_close(targets.max(1).values, torch.full((8,), 0.92))
