"""The export format: one folder per trained (or imported) model, written by training and by
`import_official`, read by evaluation, by timm and by the Hugging Face Hub.

    <folder>/model.safetensors   the weights to use (the EMA when the run kept one)
    <folder>/config.json         timm's hub config: architecture, model_args, label_names, preprocessing
    <folder>/raw.safetensors     the trained weights without EMA (only when they differ)
    <folder>/card.json           the pipeline's record: variant, files, metrics, class index, MLflow run

`model.safetensors` + `config.json` are what `timm.models.save_for_hf` writes, so the folder loads
with `timm.create_model('local-dir:<folder>', pretrained=True)` and uploads as it is
(`timm.models.push_to_hf_hub` / `huggingface_hub.upload_folder`). A folder is written under a
temporary name and swapped in whole, so a reader never sees a half-written export.
"""
import json
import os
import re
import shutil
from pathlib import Path
from typing import Any

import timm
import torch
from safetensors.torch import load_file, save_file
from timm.models import save_for_hf

from .io import write_json_atomic
from .models import checkpoint_filter_fn  # importing sgformer.models registers the models with timm

WEIGHT_FILES = {'ema': 'model.safetensors', 'raw': 'raw.safetensors'}


class ExportError(ValueError):
    """An export folder that cannot be used, already phrased for the user."""


def save_export(folder: str | Path, *, model_name: str, model_kwargs: dict[str, Any], weights: dict[str, dict],
                class_index: dict[str, int] | None, card: dict[str, Any]) -> dict:
    """Write an export folder.

    Args:
        folder: the export folder (replaced whole).
        model_name, model_kwargs: what `timm.create_model` builds.
        weights: `{'ema': state_dict}` and/or `{'raw': state_dict}` (full, unsharded); the EMA
            becomes `model.safetensors`, or the raw weights when there is no EMA.
        class_index: synset -> label of the data the model was trained on, or None.
        card: more fields for `card.json` (variant, metrics, mlflow_run_id, ...).

    Returns:
        The card written.
    """
    folder = Path(folder)
    tmp, old = folder.with_name(f'.{folder.name}.tmp'), folder.with_name(f'.{folder.name}.old')
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        card = _write_export(tmp, model_name, model_kwargs, weights, class_index, card)
    except BaseException as e:  # a full disk or a kill: the previous export stays as it was
        shutil.rmtree(tmp, ignore_errors=True)
        raise _os_error(e, folder) or e
    if folder.exists():
        shutil.rmtree(old, ignore_errors=True)
        folder.rename(old)
    tmp.rename(folder)
    shutil.rmtree(old, ignore_errors=True)
    return card


def _os_error(error: BaseException, folder: Path) -> OSError | None:
    """safetensors reports a failed write as `SafetensorError: ... (os error 28)`: the OSError it is."""
    found = re.search(r'os error (\d+)', str(error)) if type(error).__name__ == 'SafetensorError' else None
    return OSError(int(found.group(1)), os.strerror(int(found.group(1))), str(folder)) if found else None


def _write_export(tmp: Path, model_name: str, model_kwargs: dict[str, Any], weights: dict[str, dict],
                  class_index: dict[str, int] | None, card: dict[str, Any]) -> dict:
    main = 'ema' if 'ema' in weights else 'raw'
    model = timm.create_model(model_name, **model_kwargs)
    model.load_state_dict(weights[main])
    labels = sorted(class_index, key=class_index.get) if class_index else None
    size = model_kwargs['img_size']
    save_for_hf(model, str(tmp), model_args=model_kwargs, safe_serialization=True,
                model_config=dict(label_names=labels) if labels else None,
                data_config=dict(input_size=(3, size, size), crop_pct=model.pretrained_cfg['crop_pct']))
    files = {name: WEIGHT_FILES['ema'] for name in WEIGHT_FILES}  # both names, one file unless raw differs
    if main == 'ema' and 'raw' in weights:
        tensors = {k: v.detach().cpu().contiguous() for k, v in weights['raw'].items()}
        save_file(tensors, str(tmp / WEIGHT_FILES['raw']), metadata={'format': 'pt'})
        files['raw'] = WEIGHT_FILES['raw']
    card = dict(card, model=model_name, model_kwargs=model_kwargs, weights=files, class_index=class_index)
    write_json_atomic(tmp / 'card.json', card)
    return card


def read_card(folder: str | Path) -> dict:
    """The `card.json` of an export folder.

    Raises:
        ExportError: no card (not an export, or an export from before this format).
    """
    path = Path(folder) / 'card.json'
    if not path.is_file():
        raise ExportError(f'{path} not found: train the variant first, or import an official checkpoint '
                          '(python -m pipeline.tools.import_official)')
    return json.loads(path.read_text())


def load_export(folder: str | Path, weights: str, **model_kwargs) -> tuple[torch.nn.Module, dict]:
    """Build the model of an export folder and load one of its weight files.

    Args:
        folder: an export folder.
        weights: 'ema' or 'raw'.
        model_kwargs: override the card's, e.g. `img_size` to run at another resolution.

    Returns:
        `(model in eval mode, card)`.
    """
    folder = Path(folder)
    card = read_card(folder)
    if weights not in card['weights']:
        raise ExportError(f"{folder / 'card.json'} has no {weights!r} weights (has: {', '.join(card['weights'])})")
    model = timm.create_model(card['model'], **{**card['model_kwargs'], **model_kwargs})
    # the filter resamples pos_embed when img_size differs from the trained one
    model.load_state_dict(checkpoint_filter_fn(load_file(str(folder / card['weights'][weights])), model))
    return model.eval(), card


def check_classes(folder: str | Path, card: dict, class_index: dict[str, int], *, where: str) -> None:
    """Refuse the export in `folder` when its classes are not the data's, in one line naming both.

    Raises:
        ExportError: different number of classes, or the same number in another order / other synsets.
    """
    exported = card.get('class_index')
    num_classes = card['model_kwargs']['num_classes']
    if num_classes != len(class_index):
        raise ExportError(f"{folder}: the export has {num_classes} classes but {where} has {len(class_index)}: evaluate it on "
                          'data with its classes (data.betons), or import it with --class-index of that data')
    if exported is not None and exported != class_index:
        differ = sorted(set(exported) ^ set(class_index))[:5] or ['same synsets, other order']
        raise ExportError(f'{folder}: the export was trained on other classes than {where} ({", ".join(differ)})')
