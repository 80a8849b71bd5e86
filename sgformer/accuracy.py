"""Top-1 / top-5 / cross-entropy sums of a classifier: the one definition behind the trainer's
per-epoch validation (summed over ranks) and the evaluate stage's numbers."""
import torch
import torch.nn.functional as F


def classification_sums(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """`[correct top-1, correct top-5, summed cross-entropy, images]` of one batch, float64 on the
    logits' device: sums add over batches and ranks, and stay on the device until read."""
    logits = logits.float()
    top5 = logits.topk(min(5, logits.shape[1]), dim=1).indices
    return torch.stack([
        (top5[:, 0] == labels).sum(),
        (top5 == labels[:, None]).any(dim=1).sum(),
        F.cross_entropy(logits, labels, reduction='sum'),
        torch.tensor(labels.numel(), device=logits.device),
    ]).double()


def accuracy_from_sums(sums: torch.Tensor | list[float]) -> dict[str, float]:
    """`top1`, `top5` and mean `loss` from `classification_sums` added up."""
    correct1, correct5, loss_sum, seen = (float(v) for v in sums)
    seen = max(seen, 1.0)
    return dict(top1=correct1 / seen, top5=correct5 / seen, loss=loss_sum / seen)
