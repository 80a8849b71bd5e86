"""Batched train augmentation: seeded by the batch index, per sample, shapes and soft targets right,
random erasing with timm's distribution and the same op count at any batch size."""
import math

import pytest
import torch

from conftest import CountOps
from sgformer.config import Augment
from sgformer.augment.transforms import BatchRandomErasing, EvalTransform, TrainTransform, normalize

OFFICIAL = Augment(auto_augment='rand-m9-mstd0.5-inc1', reprob=0.25, mixup=0.8, cutmix=1.0, smoothing=0.1)


def official(seed: int, num_classes: int = 5) -> TrainTransform:
    return TrainTransform(OFFICIAL, num_classes=num_classes, seed=seed, device=torch.device('cpu'))


def batch(n=8, size=48) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (n, 3, size, size), dtype=torch.uint8, generator=g)
    images[:, :, size // 4:size // 2] = 200  # some structure for the geometric ops to move
    return images, torch.arange(n) % 5


def test_same_seed_same_batch_other_seed_other_batch():
    images, labels = batch()
    a = official(3)(images, labels, index=0)
    b = official(3)(images, labels, index=0)
    c = official(4)(images, labels, index=0)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(a[0], c[0])


def test_batches_differ_by_index_and_global_rng_is_untouched():
    images, labels = batch()
    t = official(0)
    torch.manual_seed(123)
    first = t(images, labels, index=0)[0]
    after = torch.rand(3)
    torch.manual_seed(123)
    assert torch.equal(torch.rand(3), after)
    assert not torch.equal(t(images, labels, index=1)[0], first)
    assert torch.equal(t(images, labels, index=0)[0], first)  # a resumed run redraws batch 0 exactly


def test_outputs_normalised_images_and_mixed_smoothed_targets():
    images, labels = batch()
    out, targets = official(0)(images, labels, index=0)
    assert out.shape == images.shape and out.dtype == torch.float32
    assert targets.shape == (8, 5)
    torch.testing.assert_close(targets.sum(1), torch.ones(8))
    assert targets.max() <= 0.9 + 0.1 / 5 + 1e-6  # smoothing 0.1 caps the top class
    plain, _ = EvalTransform()(images, labels)
    torch.testing.assert_close(plain, normalize(images))
    assert abs(float(normalize(torch.full((1, 3, 2, 2), 124, dtype=torch.uint8))[0, 0].mean())) < 0.01


def test_no_mixup_gives_smoothed_one_hot():
    images, labels = batch()
    light = Augment(smoothing=0.1)
    _, targets = TrainTransform(light, num_classes=5, seed=0, device=torch.device('cpu'))(images, labels, index=0)
    assert torch.equal(targets.argmax(1), labels)
    torch.testing.assert_close(targets.max(1).values, torch.full((8,), 0.92))


def test_erasing_follows_timms_distribution():
    """Per image: erased with probability p; a box of 2-33 % of the area, aspect 0.3-3.3, inside."""
    torch.manual_seed(0)
    boxes = BatchRandomErasing(0.25).boxes(20_000, 64, 48)
    top, left, h, w = boxes.T
    erased = h > 0
    assert erased.float().mean() == pytest.approx(0.25, abs=0.015)
    area = (h * w)[erased].float() / (64 * 48)
    assert area.min() >= 0.015 and area.max() <= 0.35 and area.mean() == pytest.approx((0.02 + 1 / 3) / 2, abs=0.02)
    log_ratio = torch.log(h[erased].float() / w[erased].float())
    assert log_ratio.mean() == pytest.approx(0.0, abs=0.05)
    assert abs(log_ratio).max() <= math.log(1 / 0.3) + 0.2
    assert (top + h <= 64).all() and (left + w <= 48).all()


def test_erasing_replaces_only_the_box_with_noise():
    images = torch.zeros(64, 3, 32, 32)
    torch.manual_seed(1)
    out = BatchRandomErasing(1.0)(images)
    changed = (out != 0).any(1)  # B, H, W
    for i in range(64):
        rows, cols = changed[i].nonzero(as_tuple=True)
        assert len(rows) and (rows.max() - rows.min() + 1) * (cols.max() - cols.min() + 1) == len(rows)  # one box
    assert out[out != 0].std() == pytest.approx(1.0, abs=0.05)


@pytest.mark.parametrize('augment', [Augment(), OFFICIAL], ids=['demo', 'official'])
def test_op_count_does_not_grow_with_the_batch(augment):
    counts = []
    for size in (16, 128):
        images, labels = batch(n=size, size=32)
        transform = TrainTransform(augment, num_classes=5, seed=0, device=torch.device('cpu'))
        with CountOps() as mode:
            transform(images, labels, index=0)
        counts.append(mode.count)
    assert counts[1] <= counts[0], counts
