"""One variant's training run, end to end: process group, loaders, augmentation, `Trainer`,
MLflow tracking, DVC metrics / plots and the exported weights.
"""
import hashlib
import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import timm
import torch
import torch.distributed as dist
from timm.loss import SoftTargetCrossEntropy

from ..config import ConfigError
from ..data.loader import create_loader
from ..data.transforms import EvalTransform, TrainTransform
from ..tracking import Tracker, git_tags, write_metrics, write_plot
from .distributed import destroy_distributed, init_distributed
from .export import save_weights, write_model_card
from .trainer import NonFiniteLossError, Parallelism, Trainer, TrainSchedule


@dataclass(frozen=True)
class RunPaths:
    """Where a variant's outputs go (the train stage's DVC outs)."""

    betons: Path
    source: Path
    model_dir: Path
    checkpoint_dir: Path
    metrics: Path
    plots_dir: Path


def _broadcast(value: Any) -> Any:
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def _param_dtype(setting: str, device: torch.device) -> str:
    """'auto': bfloat16 parameters on CUDA (the recipe's AMP), float32 on CPU."""
    if setting != 'auto':
        return setting
    return 'bfloat16' if device.type == 'cuda' else 'float32'


def _loaders(variant, data, loader, paths: RunPaths, rank_batch: int, device, distributed: bool):
    augment = variant.augment
    common = dict(backend=data.backend, source=paths.source, betons=paths.betons, img_size=variant.img_size,
                  num_workers=loader.num_workers, os_cache=loader.os_cache, batches_ahead=loader.batches_ahead,
                  distributed=distributed, device=device, crop_pct=augment.crop_pct, seed=variant.seed)
    train = create_loader(split='train', batch_size=rank_batch, scale=augment.scale, ratio=augment.ratio,
                          hflip=augment.hflip, **common)
    val = create_loader(split='val', batch_size=rank_batch, **common)
    return train, val


def run_fingerprint(variant, data, class_index: dict, betons: Path) -> str:
    """A short hash of everything that makes two training runs the same run: the resolved variant
    (but not world_size: DCP reshards on resume), the data settings and the betons' identity."""
    settings = variant.model_dump(exclude={'world_size'})
    beton_stats = {f.name: [f.stat().st_size, f.stat().st_mtime_ns] for f in sorted(betons.glob('*.beton'))}
    payload = json.dumps([settings, data.model_dump(), class_index, beton_stats], sort_keys=True, default=str)
    return hashlib.sha256(payload.encode()).hexdigest()[:12]


def _run_checkpoint_dir(root: Path, fingerprint: str, is_main: bool) -> Path:
    """`root/<fingerprint>`: a rerun with the same settings resumes; changed settings (e.g. a
    `dvc exp run -S variants.x.lr=...`) start over instead of resuming a finished, different run."""
    if is_main and root.is_dir():
        for stale in root.iterdir():
            if stale.is_dir() and stale.name != fingerprint:
                shutil.rmtree(stale)
    dist.barrier()
    return root / fingerprint


def train_variant(name: str, variant, *, data, loader, fsdp, checkpoint, tracking, paths: RunPaths,
                  logged_params: dict[str, Any]) -> dict[str, float]:
    """Train `variant` (a resolved `sgformer.config.Variant`) and export it; returns the final metrics.

    Collective: every rank calls it. Rank 0 alone writes MLflow, metrics, plots and exports.
    """
    info = init_distributed(fsdp.device)
    try:
        class_index = json.loads((paths.betons / 'class_index.json').read_text())
        if len(class_index) != variant.num_classes:
            raise ConfigError(f'variants.{name}.num_classes is {variant.num_classes} but the data has '
                             f'{len(class_index)} classes ({paths.betons / "class_index.json"})')
        rank_batch = variant.batch_size // info.world_size
        # rank 0's view decides: file times may differ between the nodes' copies of the betons
        fingerprint = _broadcast(run_fingerprint(variant, data, class_index, paths.betons))
        train_loader, val_loader = _loaders(variant, data, loader, paths, rank_batch, info.device,
                                            distributed=info.world_size > 1)
        trainer = Trainer(
            model_name=variant.model,
            model_kwargs=variant.model_kwargs(),
            schedule=TrainSchedule(epochs=variant.epochs, lr=variant.scaled_lr(), weight_decay=variant.weight_decay,
                                   warmup_epochs=variant.warmup_epochs, warmup_lr=variant.warmup_lr,
                                   min_lr=variant.min_lr, ema_decay=variant.ema_decay, ema_warmup=variant.ema_warmup,
                                   grad_clip=variant.grad_clip, max_nonfinite_steps=variant.max_nonfinite_steps),
            parallelism=Parallelism(param_dtype=_param_dtype(fsdp.param_dtype, info.device), reduce_dtype=fsdp.reduce_dtype,
                                    activation_checkpointing=fsdp.activation_checkpointing, compile=fsdp.compile),
            dist_info=info,
            steps_per_epoch=len(train_loader),
            checkpoint_dir=_run_checkpoint_dir(paths.checkpoint_dir, fingerprint, info.is_main),
            checkpoint_every=checkpoint.every_epochs,
            keep_checkpoints=checkpoint.keep,
            seed=variant.seed,
        )
        trainer.resume()
        tracker = Tracker(enabled=info.is_main, tracking_uri=tracking.tracking_uri, experiment=tracking.experiment,
                          run_name=name, run_id=trainer.progress.run_id or None, system_metrics=tracking.system_metrics)
        trainer.progress.run_id = _broadcast(tracker.run_id)
        trainer.tracker = tracker
        if not trainer.progress.history:  # a fresh run: describe it once
            tracker.log_params(logged_params)
            tracker.set_tags(dict(git_tags(), variant=name, stage='train', world_size=str(info.world_size),
                                  device=str(info.device), torch=torch.__version__, timm=timm.__version__))
        augment = variant.augment
        train_transform = TrainTransform(num_classes=variant.num_classes, auto_augment=augment.auto_augment,
                                         reprob=augment.reprob, mixup=augment.mixup, cutmix=augment.cutmix,
                                         smoothing=augment.smoothing, seed=variant.seed + 1_000_003 * info.rank,
                                         device=info.device)
        # A resumed run continues the augmentation seed sequence where the checkpoint left it.
        train_transform.calls = trainer.progress.step + trainer.progress.skipped_steps
        try:
            history = trainer.fit(train_loader, val_loader, loss_fn=SoftTargetCrossEntropy(),
                                  batch_transform=train_transform, eval_transform=EvalTransform(),
                                  global_batch=variant.batch_size)
        except NonFiniteLossError:
            tracker.end('FAILED')
            raise
        final = {k: v for k, v in history[-1].items() if k != 'epoch'}
        model_sd, ema_sd = trainer.full_state_dicts()
        if info.is_main:
            _export(name, variant, class_index, final, model_sd, ema_sd, paths, history, tracker)
        tracker.end()
        return final
    finally:
        destroy_distributed()


def _export(name, variant, class_index, final, model_sd, ema_sd, paths: RunPaths, history, tracker) -> None:
    paths.model_dir.mkdir(parents=True, exist_ok=True)
    save_weights(model_sd, paths.model_dir / 'model.safetensors')
    save_weights(ema_sd, paths.model_dir / 'ema.safetensors')
    write_model_card(paths.model_dir / 'card.json', variant=name, model=variant.model,
                     model_kwargs=variant.model_kwargs(), weights={'model': 'model.safetensors', 'ema': 'ema.safetensors'},
                     metrics=final, class_index=class_index, mlflow_run_id=tracker.run_id)
    write_metrics(paths.metrics, final)
    write_plot(paths.plots_dir / 'train.tsv', history)
    for file in ('card.json', 'model.safetensors', 'ema.safetensors'):
        tracker.log_artifact(paths.model_dir / file, 'model')
    tracker.log_artifact(paths.plots_dir / 'train.tsv', 'plots')
