"""Accuracy of a classifier over a loader, and its inference speed."""
import time
from collections.abc import Callable, Iterable

import torch
import torch.nn as nn
import torch.nn.functional as F


@torch.no_grad()
def predict(model: nn.Module, loader: Iterable, transform: Callable | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Float32 logits `N, num_classes` and labels `N` of every batch of `loader`, on the CPU."""
    model.eval()
    all_logits, all_labels = [], []
    for images, labels in loader:
        if transform is not None:
            images, labels = transform(images, labels)
        all_logits.append(model(images).float().cpu())
        all_labels.append(labels.cpu().clone())  # ffcv reuses its label buffers
    return torch.cat(all_logits), torch.cat(all_labels)


def classification_metrics(logits: torch.Tensor, labels: torch.Tensor) -> dict:
    """Top-1 / top-5 accuracy, mean cross-entropy, per-class accuracy and the confusion matrix.

    Returns:
        `top1`, `top5`, `loss` (floats), `per_class_top1` (list, NaN for a class without images)
        and `confusion` (`num_classes x num_classes` int64 tensor, rows = true class, columns = predicted).
    """
    num_classes = logits.shape[1]
    top5 = logits.topk(min(5, num_classes), dim=1).indices
    predicted = top5[:, 0]
    confusion = torch.bincount(labels * num_classes + predicted, minlength=num_classes ** 2).view(num_classes, num_classes)
    per_class = confusion.diagonal().double() / confusion.sum(dim=1).double()
    return dict(top1=(predicted == labels).double().mean().item(),
                top5=(top5 == labels[:, None]).any(dim=1).double().mean().item(),
                loss=F.cross_entropy(logits, labels).item(),
                per_class_top1=per_class.tolist(),
                confusion=confusion)


@torch.no_grad()
def measure_speed(model: nn.Module, *, batch_size: int, img_size: int, steps: int = 10, warmup: int = 2,
                  device: str | torch.device = 'cpu') -> dict[str, float]:
    """Inference images/s and latency of one batch (median over `steps` timed passes).

    The input is random: speed does not depend on the pixels.
    """
    device = torch.device(device)
    model.eval()
    images = torch.randn(batch_size, 3, img_size, img_size, device=device)
    times = []
    for i in range(warmup + steps):
        if device.type == 'cuda':
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        model(images)
        if device.type == 'cuda':
            torch.cuda.synchronize(device)
        if i >= warmup:
            times.append(time.perf_counter() - start)
    median = sorted(times)[len(times) // 2]
    return dict(img_s=batch_size / median, latency_ms=1000 * median)
