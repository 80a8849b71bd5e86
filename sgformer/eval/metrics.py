"""Accuracy of a classifier over a loader (top-1 / top-5, per class, confusion) and its speed."""
import statistics
import time
from collections.abc import Callable, Iterable

import torch
import torch.nn as nn
from tqdm import tqdm

from ..accuracy import accuracy_from_sums, classification_sums
from ..runtime import autocast


def _progress(loader: Iterable, description: str | None) -> Iterable:
    """`loader` wrapped in a tqdm bar counting images (img/s), or as it is."""
    if description is None:
        yield from loader
        return
    with tqdm(desc=description, unit='img', unit_scale=True, leave=False, mininterval=1) as bar:
        for images, labels in loader:
            yield images, labels
            bar.update(len(labels))


@torch.no_grad()
def predict(model: nn.Module, loader: Iterable, transform: Callable | None = None, *,
            device: torch.device = torch.device('cpu'), dtype: torch.dtype = torch.float32,
            progress: str | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Float32 logits `N, num_classes` and labels `N` of every batch of `loader`, on the CPU.

    Args:
        transform: `(images, labels) -> (images, labels)` applied to each batch first.
        device, dtype: where the model runs and its autocast dtype (batches arrive on `device`).
        progress: a tqdm bar with this description (img/s), or None for none.
    """
    model.eval()
    all_logits, all_labels = [], []
    for images, labels in _progress(loader, progress):
        if transform is not None:
            images, labels = transform(images, labels)
        with autocast(device, dtype):
            logits = model(images)
        all_logits.append(logits.float().cpu())
        all_labels.append(labels.cpu().clone())  # ffcv reuses its label buffers
    return torch.cat(all_logits), torch.cat(all_labels)


def classification_metrics(logits: torch.Tensor, labels: torch.Tensor) -> dict:
    """Top-1 / top-5 accuracy, mean cross-entropy, per-class accuracy and the confusion matrix.

    Returns:
        `top1`, `top5`, `loss` (floats), `per_class_top1` (list, NaN for a class without images)
        and `confusion` (`num_classes x num_classes` int64 tensor, rows = true class, columns = predicted).
    """
    num_classes = logits.shape[1]
    predicted = logits.argmax(dim=1)
    confusion = torch.bincount(labels * num_classes + predicted, minlength=num_classes ** 2).view(num_classes, num_classes)
    per_class = confusion.diagonal().double() / confusion.sum(dim=1).double()
    return dict(accuracy_from_sums(classification_sums(logits, labels)), per_class_top1=per_class.tolist(),
                confusion=confusion)


def timed(fn: Callable[[], object], device: torch.device = torch.device('cpu')) -> float:
    """Wall seconds of one call of `fn`, with CUDA work queued before and by it finished."""
    if device.type == 'cuda':
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    fn()
    if device.type == 'cuda':
        torch.cuda.synchronize(device)
    return time.perf_counter() - start


def median_seconds(fn: Callable[[], object], *, steps: int, warmup: int = 2,
                   device: torch.device = torch.device('cpu')) -> float:
    """Median wall time of `steps` calls of `fn` after `warmup` untimed ones: the one timing rule of
    the evaluate stage and the benchmarks."""
    for _ in range(warmup):
        fn()
    return statistics.median(timed(fn, device) for _ in range(steps))


@torch.no_grad()
def measure_speed(model: nn.Module, *, batch_size: int, img_size: int, steps: int,
                  device: torch.device = torch.device('cpu'), dtype: torch.dtype = torch.float32) -> dict[str, float]:
    """Inference images/s and latency of one batch (median over `steps` timed passes), on `device`
    under autocast to `dtype`. The input is random: speed does not depend on the pixels."""
    model.eval()
    images = torch.randn(batch_size, 3, img_size, img_size, device=device)

    def forward():
        with autocast(device, dtype):
            model(images)

    median = median_seconds(forward, steps=steps, device=device)
    return dict(img_s=batch_size / median, latency_ms=1000 * median)
