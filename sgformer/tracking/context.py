"""What a run records besides training's numbers, as plain values: params as dotted keys, the
names of per-epoch metrics, the git and DVC context as tags, the run's description, the betons as
dataset descriptions.
"""
import hashlib
import json
import os
import subprocess
from pathlib import Path
from typing import Any

from ..config import Data, Variant

__all__ = ['DVC_ENV_TAGS', 'NOTE_TAG', 'beton_dataset', 'dvc_tags', 'epoch_metric_name', 'flatten', 'git_dirty',
           'run_description']

DVC_ENV_TAGS = {'DVC_EXP_NAME': 'dvc.exp_name', 'DVC_EXP_BASELINE_REV': 'dvc.exp_baseline_rev',
                'DVC_STAGE': 'dvc.stage'}
NOTE_TAG = 'mlflow.note.content'  # a run's description in MLflow (the run page's Description)


def flatten(tree: dict[str, Any], prefix: str = '') -> dict[str, Any]:
    """`{'a': {'b': 1}}` -> `{'a.b': 1}` (how params are logged, as ffcv's params.json does)."""
    flat = {}
    for key, value in tree.items():
        name = f'{prefix}{key}'
        if isinstance(value, dict):
            flat.update(flatten(value, f'{name}.'))
        else:
            flat[name] = value
    return flat


# Per-epoch history keys that describe the run itself (its side and what it cost): `train/<key>`.
RUN_KEYS = ('img_size', 'data_wait', 'gpu_hours', 'peak_mem_gib', 'mfu')


def epoch_metric_name(key: str) -> str:
    """A per-epoch history key -> its MLflow name: `val_ema_top1` -> `val/ema_top1`,
    `train_loss` -> `train/epoch_loss`, `epoch_time_s` -> `train/epoch_time_s`, `gpu_hours` ->
    `train/gpu_hours` (the `RUN_KEYS`)."""
    if key.startswith('val_'):
        return f"val/{key.removeprefix('val_')}"
    if key in RUN_KEYS:
        return f'train/{key}'
    return f"train/epoch_{key.removeprefix('train_').removeprefix('epoch_')}"


def run_description(variant: Variant, differences: dict[str, Any]) -> str:
    """What a variant is, in one line: `sgformer_nano at 64 px, 8 epochs; differs from train:
    drop_path_rate 0.1` (`differences`: `Params.differences`)."""
    own = ', '.join(f'{key} {_text(value)}' for key, value in differences.items()) or 'nothing'
    return f'{variant.model} at {variant.img_size} px, {variant.epochs} epochs; differs from train: {own}'


def _text(value: Any) -> str:
    """A value as params.yaml writes it."""
    return json.dumps(value) if value is None or isinstance(value, bool) else str(value)


def git_dirty(cwd: str | Path = '.') -> str | None:
    """'True' / 'False' for a git checkout with / without uncommitted changes, else None (MLflow
    records the commit itself, as `mlflow.source.git.commit`)."""
    try:
        status = subprocess.run(['git', 'status', '--porcelain', '--untracked-files=no'], cwd=cwd,
                                capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return str(bool(status.stdout.strip())) if status.returncode == 0 else None


def dvc_tags() -> dict[str, str]:
    """The DVC experiment and stage this command runs in, as run tags: `dvc exp run` gives its
    stage commands DVC_EXP_NAME and DVC_EXP_BASELINE_REV, every stage DVC_STAGE (dvc/env.py)."""
    return {tag: os.environ[var] for var, tag in DVC_ENV_TAGS.items() if os.environ.get(var)}


def beton_dataset(data: Data, split: str) -> dict[str, Any]:
    """One beton as an MLflow dataset: named after the image folder and the split, its source the
    image folder (`data.source`), its digest a hash of the class index and the beton's size and
    modification time (what `run_fingerprint` also trusts: hashing ImageNet's betons takes minutes)."""
    betons = Path(data.betons)
    beton, class_index = betons / f'{split}.beton', (betons / 'class_index.json').read_bytes()
    size, mtime = (beton.stat().st_size, beton.stat().st_mtime_ns) if beton.is_file() else (0, 0)  # folder backend
    digest = hashlib.sha256(class_index + f'{size}:{mtime}'.encode()).hexdigest()[:16]
    profile = dict(split=split, beton=str(beton.resolve()), bytes=size, classes=len(json.loads(class_index)))
    return dict(name=f'{Path(data.source).resolve().name}-{split}', source=str(Path(data.source).resolve()),
                digest=digest, profile=profile)
