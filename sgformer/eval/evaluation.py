"""One export's evaluation, end to end: accuracy on the val set (also at extra resolutions), speed,
size, pictures; the headline as a DVC metrics file, every number in a report, tables as DVC plots,
and the same numbers in the MLflow run that trained it.

Runs on `eval.device` (CUDA when there is one) under bfloat16 autocast there, compiled when the
run's `runtime.compile` asks for it; the reported throughput names its device and dtype.
"""
import csv
import io
import json
from dataclasses import dataclass
from pathlib import Path

import torch

from ..config import Data, Eval, Loader, Tracking
from ..loader import create_loader, loader_size
from ..augment.transforms import EvalTransform, normalize
from ..datasets.beton import skipped_images
from ..export import check_classes, load_export
from ..io import write_json_atomic, write_text_atomic
from ..runtime import apply_compile, compile_enabled, resolve_device, resolve_precision
from ..tracking import Tracker, beton_dataset
from ..flops import model_size
from .metrics import classification_metrics, measure_speed, predict
from .pictures import confusion_png, significance_grids

# The DVC metrics of a variant, the same keys in every variant's file so that `dvc metrics show` is
# one row per variant: accuracy, speed, size and what training cost (`gpu_hours`, null for an
# export that does not say). Every other number goes to the report.
HEADLINE = ('top1', 'top5', 'img_s', 'params_m', 'gmacs', 'gpu_hours')


@dataclass(frozen=True)
class EvalPaths:
    """Where one evaluation reads and writes (the evaluate stage's DVC deps and outs)."""

    model_dir: Path
    report: Path  # the convert stage's report (skipped images)
    metrics: Path  # the headline (HEADLINE)
    details: Path  # every number
    plots_dir: Path


class _KeepImages:
    """A loader wrapper that keeps a CPU copy of the uint8 images at the given dataset positions."""

    def __init__(self, loader, positions: set[int]):
        self.loader, self.positions, self.kept, self.seen = loader, positions, [], 0

    def __iter__(self):
        for images, labels in self.loader:
            for i in sorted(p - self.seen for p in self.positions if self.seen <= p < self.seen + len(images)):
                self.kept.append(images[i].cpu().clone())
            self.seen += len(images)
            yield images, labels


class Evaluator:
    """The model of an export on the evaluation device, and the val loader at any resolution."""

    def __init__(self, paths: EvalPaths, eval_cfg: Eval, *, data: Data, loader: Loader, compile_setting: bool | str):
        self.paths, self.cfg, self.data, self.loader_cfg = paths, eval_cfg, data, loader
        self.device = resolve_device(eval_cfg.device)
        self.dtype = resolve_precision('auto', self.device)
        self.compile = compile_enabled(compile_setting, self.device)

    def model(self, **model_kwargs) -> tuple[torch.nn.Module, dict]:
        model, card = load_export(self.paths.model_dir, self.cfg.weights, **model_kwargs)
        model = model.to(self.device)
        if self.compile:
            apply_compile(model)
        return model, card

    def val_loader(self, img_size: int):
        return create_loader('val', data=self.data, loader=self.loader_cfg, crop_pct=self.cfg.crop_pct, img_size=img_size,
                             batch_size=self.cfg.batch_size, device=self.device,
                             exclude=skipped_images(self.paths.report))

    def predict(self, model, loader, description: str):
        return predict(model, loader, EvalTransform(), device=self.device, dtype=self.dtype, progress=description)


def evaluate_export(name: str, *, paths: EvalPaths, eval_cfg: Eval, data: Data, loader: Loader, tracking: Tracking,
                    compile_setting: bool | str = False) -> dict[str, float]:
    """Evaluate the export in `paths.model_dir`; returns every number (`paths.details`), of which
    `paths.metrics` holds the headline.

    Raises:
        ExportError: the export is missing, or its classes are not the val data's.
    """
    evaluator = Evaluator(paths, eval_cfg, data=data, loader=loader, compile_setting=compile_setting)
    model, card = evaluator.model()
    class_index_file = Path(data.betons) / 'class_index.json'
    check_classes(paths.model_dir, card, json.loads(class_index_file.read_text()), where=str(class_index_file))
    img_size = card['model_kwargs']['img_size']
    class_names = sorted(card['class_index'], key=card['class_index'].get) if card.get('class_index') else None

    val = evaluator.val_loader(img_size)
    step = max(1, loader_size(val) // eval_cfg.num_pictures)
    keeper = _KeepImages(val, {i * step for i in range(eval_cfg.num_pictures)})
    logits, labels = evaluator.predict(model, keeper, f'evaluate {name} @ {img_size}')
    scores = classification_metrics(logits, labels)
    results = dict(top1=scores['top1'], top5=scores['top5'], loss=scores['loss'], img_size=img_size,
                   images=len(labels), **model_size(model, img_size))
    speed = measure_speed(model, batch_size=eval_cfg.speed_batch_size, img_size=img_size, steps=eval_cfg.speed_steps,
                          device=evaluator.device, dtype=evaluator.dtype)
    results.update(img_s=speed['img_s'], latency_ms=speed['latency_ms'], speed_batch_size=eval_cfg.speed_batch_size,
                   speed_device=evaluator.device.type, speed_dtype=str(evaluator.dtype).removeprefix('torch.'))
    if 'gpu_hours' in card.get('metrics', {}):  # what training cost, beside what it reached
        results['train_gpu_hours'] = card['metrics']['gpu_hours']
    for size in eval_cfg.resolutions:
        model_at_size, _ = evaluator.model(img_size=size)
        at_size = classification_metrics(*evaluator.predict(model_at_size, evaluator.val_loader(size),
                                                            f'evaluate {name} @ {size}'))
        results[f'top1_{size}'] = at_size['top1']

    names = class_names or [str(k) for k in range(logits.shape[1])]
    pictures = _write_plots(paths.plots_dir, names, labels, logits.argmax(1), scores)
    if keeper.kept:
        kept = torch.stack(keeper.kept).to(evaluator.device)
        pictures += significance_grids(model, kept, normalize(kept), paths.plots_dir / 'images')
    write_json_atomic(paths.details, results)
    write_json_atomic(paths.metrics, headline(results))
    log_evaluation(name, card, results, per_class=dict(zip(names, scores['per_class_top1'])), pictures=pictures,
                   tracking=tracking, data=data)
    return results


def headline(results: dict) -> dict:
    """The HEADLINE keys of an evaluation's results, in that order (`gpu_hours` is the training's)."""
    return {k: results.get('train_gpu_hours' if k == 'gpu_hours' else k) for k in HEADLINE}


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


def log_evaluation(name: str, card: dict, results: dict, *, per_class: dict[str, float], pictures: list[Path],
                   tracking: Tracking, data: Data) -> None:
    """Log the results into the run that trained the export (a new run for exports without one),
    the `eval/...` metrics also into that run's logged model (the variant the card names),
    measured on the val beton.

    Args:
        name: the evaluated variant (the run's name when the export has no run).
        card: the export's card.json (`mlflow_run_id`, `variant`, `model`).
        results: the numbers written to the DVC metrics file; the numeric ones become `eval/<key>`.
        per_class: class name -> top-1, logged as `eval/per_class_top1.json`.
        pictures: files logged under `eval/`.
    """
    run_id = card.get('mlflow_run_id')
    tracker = Tracker(tracking, run_name=name, run_id=run_id)
    if not run_id:
        tracker.set_tags(dict(variant=name, stage='evaluate', model=card['model']))
    tracker.set_tags({'eval.speed_device': results['speed_device'], 'eval.speed_dtype': results['speed_dtype']})
    tracker.log_metrics({f'eval/{k}': v for k, v in results.items() if isinstance(v, (int, float))}, step=0,
                        model=card.get('variant') if run_id else None, dataset=beton_dataset(data, 'val'))
    tracker.log_dict(per_class, 'eval/per_class_top1.json')
    for picture in pictures:
        tracker.log_artifact(picture, 'eval')
    tracker.end()
