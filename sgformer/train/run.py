"""One variant's training, end to end: process group, loaders, `Trainer`, MLflow run, the table of
its epochs and the export.
"""
import hashlib
import json
import sys
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import timm
import torch
import torch.distributed as dist
from torch.distributed.checkpoint.api import CheckpointException

from ..config import Checkpoint, ConfigError, Data, Loader, Runtime, Tracking, Variant
from ..loader import LoaderPerSize, create_loader
from ..datasets.beton import skipped_images
from ..export import save_export
from ..io import write_tsv_atomic
from ..tracking import Tracker, dvc_tags, git_dirty
from .checkpoint import check_shared_folder, mark_finished, prune_runs
from .distributed import destroy_distributed, init_distributed, peer_lost
from .resize import train_img_sizes
from .trainer import NonFiniteLossError, Trainer


@dataclass(frozen=True)
class RunPaths:
    """Where a variant's run reads and writes (the train stage's DVC deps and outs)."""

    report: Path
    model_dir: Path
    checkpoint_dir: Path
    epochs: Path  # every epoch's record, a TSV table


def _broadcast(value: Any) -> Any:
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def run_fingerprint(variant: Variant, data: Data, class_index: dict, betons: Path) -> str:
    """A short hash of everything that makes two training runs the same run: the resolved variant
    (but not world_size: DCP reshards on resume), the data settings and the betons' identity."""
    settings = variant.model_dump(exclude={'world_size'})
    beton_stats = {f.name: [f.stat().st_size, f.stat().st_mtime_ns] for f in sorted(betons.glob('*.beton'))}
    payload = json.dumps([settings, data.model_dump(), class_index, beton_stats], sort_keys=True, default=str)
    return hashlib.sha256(payload.encode()).hexdigest()[:12]


def with_class_count(name: str, variant: Variant, num_classes: int, *, where: Path) -> Variant:
    """`variant` with `num_classes` set to the data's class count (its null means "the data's");
    a number that disagrees is refused, naming both.

    Raises:
        ConfigError: `variant.num_classes` is another number.
    """
    if variant.num_classes is None:
        return variant.model_copy(update=dict(num_classes=num_classes))
    if variant.num_classes != num_classes:
        raise ConfigError(f'variants.{name}.num_classes is {variant.num_classes} but {where} has {num_classes} '
                          'classes: set it to null (the data\'s count) or to that number')
    return variant


def train_variant(name: str, variant: Variant, *, data: Data, loader: Loader, runtime: Runtime,
                  checkpoint: Checkpoint, tracking: Tracking, val_crop_pct: float, paths: RunPaths,
                  run_settings: dict[str, Any], description: str) -> dict[str, float]:
    """Train `variant` and export it; returns the final metrics (the last epoch's record, also in
    the export's card).

    Collective: every rank calls it. Rank 0 alone writes MLflow, the epochs table and the export.

    Args:
        val_crop_pct: the per-epoch validation's centre crop (`eval.crop_pct`, as the evaluate stage).
        run_settings: logged as the MLflow run's params (`Params.run_settings(name)`).
        description: the MLflow run's description (`tracking.run_description`).

    Raises:
        PeerLostError: another rank died, or hung past `runtime.collective_timeout_s`.
    """
    info = init_distributed(runtime.device, timeout_s=runtime.collective_timeout_s)
    try:
        class_index_file = Path(data.betons) / 'class_index.json'
        class_index = json.loads(class_index_file.read_text())
        variant = with_class_count(name, variant, len(class_index), where=class_index_file)
        # rank 0's view decides: file times may differ between the nodes' copies of the betons
        fingerprint = _broadcast(run_fingerprint(variant, data, class_index, Path(data.betons)))

        def loader_at(split: str, img_size: int):
            return create_loader(split, data=data, loader=loader, augment=variant.augment, crop_pct=val_crop_pct,
                                 img_size=img_size, batch_size=variant.batch_size // info.world_size, seed=variant.seed,
                                 device=info.device, distributed=info.world_size > 1,
                                 exclude=skipped_images(paths.report))
        sizes = train_img_sizes(variant.epochs, variant.img_size, variant.progressive_resize)
        train = LoaderPerSize(partial(loader_at, 'train')) if len(set(sizes)) > 1 else loader_at('train', sizes[0])
        steps_per_epoch = len(train.at(sizes[0]) if isinstance(train, LoaderPerSize) else train)  # the same at any size
        check_shared_folder(paths.checkpoint_dir)
        prune_runs(paths.checkpoint_dir, fingerprint, checkpoint.keep_runs)
        trainer = Trainer(variant, runtime=runtime, checkpoint=checkpoint, dist_info=info,
                          steps_per_epoch=steps_per_epoch, checkpoint_dir=paths.checkpoint_dir / fingerprint)
        resumed = trainer.resume()
        if info.is_main and resumed:
            print(f'resuming {trainer.checkpoint_dir} at step {trainer.progress.step} '
                  f'(epoch {trainer.progress.epoch} of {variant.epochs})', file=sys.stderr, flush=True)
        elif info.is_main and trainer.init_note:
            print(trainer.init_note, file=sys.stderr, flush=True)
        tracker = Tracker(tracking, run_name=name, run_id=trainer.progress.run_id or None, enabled=info.is_main)
        trainer.progress.run_id = _broadcast(tracker.run_id)
        if not trainer.progress.history:  # a fresh run: describe it once
            tracker.log_params(run_settings)
            tracker.set_tags(dict(variant=name, stage='train', world_size=str(info.world_size), device=str(info.device),
                                  torch=torch.__version__, timm=timm.__version__, **_dirty_tag(), **dvc_tags()))
            tracker.log_data(data)
            tracker.describe(description)
        try:
            history = trainer.fit(train, loader_at('val', variant.img_size), tracker=tracker,
                                  log_every=tracking.log_every_steps)
        except NonFiniteLossError:
            tracker.end('FAILED')
            raise
        mark_finished(trainer.checkpoint_dir, trainer.progress.step)
        final = {k: v for k, v in history[-1].items() if k != 'epoch'}
        model_sd, ema_sd = trainer.full_state_dicts()
        if info.is_main:
            _export(name, variant, class_index, final, dict(raw=model_sd, ema=ema_sd), paths, history, tracker)
        tracker.end()
        return final
    except (RuntimeError, CheckpointException) as e:  # DCP wraps a failed collective of a save
        lost = peer_lost(e, rank=info.rank, timeout_s=runtime.collective_timeout_s)
        if lost is None:
            raise
        raise lost from None
    finally:
        destroy_distributed()


def _dirty_tag() -> dict[str, str]:
    dirty = git_dirty()
    return {} if dirty is None else {'git.dirty': dirty}


def _export(name: str, variant: Variant, class_index: dict, final: dict, weights: dict, paths: RunPaths,
            history: list[dict], tracker: Tracker) -> None:
    save_export(paths.model_dir, model_name=variant.model, model_kwargs=variant.model_kwargs(), weights=weights,
                class_index=class_index, card=dict(variant=name, metrics=final, mlflow_run_id=tracker.run_id))
    write_tsv_atomic(paths.epochs, history)
    for file in sorted(paths.model_dir.iterdir()):
        tracker.log_artifact(file, 'model')
    tracker.log_artifact(paths.epochs, 'plots')
    tracker.log_model(paths.model_dir, step=history[-1]['epoch'])  # models:/<id>, linked to the last epoch's metrics
