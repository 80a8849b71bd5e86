"""One export's evaluation, end to end: accuracy on the val set (also at extra resolutions), speed,
size, pictures, DVC metrics / plots and the same numbers in the MLflow run that trained it.
"""
import csv
import io
from dataclasses import dataclass
from pathlib import Path

import torch

from ..data.loader import create_loader
from ..data.transforms import EvalTransform, normalize
from ..io import write_text_atomic
from ..tracking import Tracker, git_tags, write_metrics
from ..train.export import load_export
from .flops import count_macs
from .metrics import classification_metrics, measure_speed, predict
from .pictures import confusion_png, significance_grids


@dataclass(frozen=True)
class EvalPaths:
    """Where one evaluation reads and writes (the evaluate stage's DVC deps and outs)."""

    model_dir: Path
    betons: Path
    source: Path
    metrics: Path
    plots_dir: Path


class _KeepImages:
    """A loader wrapper that keeps a copy of the uint8 images at the given dataset positions."""

    def __init__(self, loader, positions: set[int]):
        self.loader, self.positions, self.kept, self.seen = loader, positions, [], 0

    def __iter__(self):
        for images, labels in self.loader:
            for i in range(len(images)):
                if self.seen + i in self.positions:
                    self.kept.append(images[i].cpu().clone())
            self.seen += len(images)
            yield images, labels


def _val_loader(paths: EvalPaths, backend: str, img_size: int, batch_size: int, loader_cfg, crop_pct: float):
    return create_loader(backend, split='val', source=paths.source, betons=paths.betons, batch_size=batch_size,
                         img_size=img_size, num_workers=loader_cfg.num_workers, os_cache=loader_cfg.os_cache,
                         batches_ahead=loader_cfg.batches_ahead, crop_pct=crop_pct)


def _dataset_size(loader) -> int:
    """Images in a loader of `sgformer.data.loader` (an ffcv `Loader` or the wrapped DataLoader)."""
    indices = getattr(loader, 'indices', None)
    return len(indices) if indices is not None else len(loader.loader.dataset)


def evaluate_export(name: str, *, paths: EvalPaths, eval_cfg, loader_cfg, backend: str, crop_pct: float,
                    tracking) -> dict[str, float]:
    """Evaluate the export in `paths.model_dir`; returns the metrics written to `paths.metrics`."""
    model, card = load_export(paths.model_dir, eval_cfg.weights)
    img_size = card['model_kwargs']['img_size']
    class_names = sorted(card['class_index'], key=card['class_index'].get) if card.get('class_index') else None

    loader = _val_loader(paths, backend, img_size, eval_cfg.batch_size, loader_cfg, crop_pct)
    step = max(1, _dataset_size(loader) // eval_cfg.num_pictures)
    keeper = _KeepImages(loader, {i * step for i in range(eval_cfg.num_pictures)})
    logits, labels = predict(model, keeper, EvalTransform())
    scores = classification_metrics(logits, labels)
    results = dict(top1=scores['top1'], top5=scores['top5'], loss=scores['loss'], img_size=img_size,
                   images=len(labels),
                   params_m=sum(p.numel() for p in model.parameters()) / 1e6,
                   gmacs=count_macs(model, (3, img_size, img_size)) / 1e9)
    speed = measure_speed(model, batch_size=eval_cfg.speed_batch_size, img_size=img_size, steps=eval_cfg.speed_steps)
    results.update(img_s=speed['img_s'], latency_ms=speed['latency_ms'], speed_batch_size=eval_cfg.speed_batch_size)
    for size in eval_cfg.resolutions:
        model_at_size, _ = load_export(paths.model_dir, eval_cfg.weights, img_size=size)
        at_size = classification_metrics(*predict(
            model_at_size, _val_loader(paths, backend, size, eval_cfg.batch_size, loader_cfg, crop_pct), EvalTransform()))
        results[f'top1_{size}'] = at_size['top1']

    names = class_names or [str(k) for k in range(logits.shape[1])]
    pictures = _write_plots(paths.plots_dir, names, labels, logits.argmax(1), scores)
    if keeper.kept:
        kept = torch.stack(keeper.kept)
        pictures += significance_grids(model, kept, normalize(kept), paths.plots_dir / 'images')
    write_metrics(paths.metrics, results)
    _track(name, card, results, scores['per_class_top1'], names, pictures, tracking)
    return results


def _write_plots(plots_dir: Path, names: list[str], labels, predicted, scores) -> list[Path]:
    """DVC plots: per-image (actual, predicted) rows for the confusion template, per-class accuracy
    and the confusion-matrix picture."""
    rows = io.StringIO()
    writer = csv.writer(rows)
    writer.writerow(['actual', 'predicted'])
    writer.writerows((names[a], names[p]) for a, p in zip(labels.tolist(), predicted.tolist()))
    write_text_atomic(plots_dir / 'confusion.csv', rows.getvalue())
    per_class = ''.join(f'{n}\t{acc:.6f}\n' for n, acc in zip(names, scores['per_class_top1']))
    write_text_atomic(plots_dir / 'per_class.tsv', 'class\ttop1\n' + per_class)
    picture = plots_dir / 'images' / 'confusion.png'
    confusion_png(scores['confusion'], names, picture)
    return [picture]


def _track(name: str, card: dict, results: dict, per_class: list[float], names: list[str], pictures: list[Path],
           tracking) -> None:
    """Log into the run that trained the export (a new run for exports without one)."""
    tracker = Tracker(enabled=True, tracking_uri=tracking.tracking_uri, experiment=tracking.experiment,
                      run_name=name, run_id=card.get('mlflow_run_id'))
    if not card.get('mlflow_run_id'):
        tracker.set_tags(dict(git_tags(), variant=name, stage='evaluate', model=card['model']))
    tracker.log_metrics({f'eval/{k}': v for k, v in results.items() if isinstance(v, (int, float))}, step=0)
    tracker.log_dict({n: acc for n, acc in zip(names, per_class)}, 'eval/per_class_top1.json')
    for picture in pictures:
        tracker.log_artifact(picture, 'eval')
    tracker.end()
