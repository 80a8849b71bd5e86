"""Weights from elsewhere: what `train.init_from` starts a fresh run from (fine-tuning, transfer)
and what `pipeline.tools.import_official` reads.

A source is an export folder (`models/<variant>`: its main weights, the EMA) or an official
SG-Former checkpoint (a path or an http(s) URL, downloaded once into torch's hub cache; EMA first).
`checkpoint_filter_fn` maps official names and resamples `pos_embed` to the model's grid; a
classifier for another number of classes is left out and re-initialised (timm's
`reset_classifier`). Every problem is an `InitError` of one line, raised before any training.
"""
import pickle
from pathlib import Path

import torch
import torch.nn as nn
from safetensors import SafetensorError
from safetensors.torch import load_file

from .export import ExportError, read_card
from .models import checkpoint_filter_fn, load_official_checkpoint

CLASSIFIER = ('head.weight', 'head.bias')


class InitError(ValueError):
    """`init_from` names weights that cannot start this run; already phrased for the user."""


def local_file(checkpoint: str) -> Path:
    """The checkpoint's path; a URL is downloaded once into torch's hub cache."""
    if not checkpoint.startswith(('http://', 'https://')):
        return Path(checkpoint)
    target = Path(torch.hub.get_dir()) / 'checkpoints' / Path(checkpoint.split('?')[0]).name
    if not target.exists():
        target.parent.mkdir(parents=True, exist_ok=True)
        torch.hub.download_url_to_file(checkpoint, str(target))
    return target


def read_weights(source: str, model_name: str) -> dict[str, torch.Tensor]:
    """The state dict `source` holds for a `model_name` run (as saved: names not yet mapped).

    Raises:
        InitError: missing, unreadable, or the weights of another model.
    """
    try:
        path = local_file(source)
    except OSError as e:  # the download failed
        raise InitError(f'{source}: cannot be downloaded ({e})') from None
    if path.is_dir():
        return _export_weights(path, source, model_name)
    if not path.is_file():
        raise InitError(f'{source}: not found (an export folder, or an official .pth path or URL)')
    try:
        state_dict = load_official_checkpoint(str(path))
    except (RuntimeError, pickle.UnpicklingError, EOFError, ValueError) as e:
        raise InitError(f'{source}: not a readable checkpoint ({str(e).splitlines()[0][:200]})') from None
    if not isinstance(state_dict, dict) or not any('patch_embed' in k or k.startswith(('stem.', 'stages.'))
                                                   for k in _unwrapped_keys(state_dict)):
        raise InitError(f'{source}: not an SG-Former checkpoint (no patch_embed / stages weights)')
    return state_dict


def _export_weights(folder: Path, source: str, model_name: str) -> dict[str, torch.Tensor]:
    try:
        card = read_card(folder)
    except ExportError as e:
        raise InitError(f'{source}: not an export folder ({e})') from None
    if card['model'] != model_name:
        raise InitError(f"{source}: holds {card['model']} weights, the run trains {model_name}")
    try:
        return load_file(str(folder / card['weights']['ema']))
    except (OSError, SafetensorError) as e:
        raise InitError(f'{source}: unreadable weights ({e})') from None


def _unwrapped_keys(checkpoint: dict) -> list[str]:
    for key in ('state_dict_ema', 'model_ema', 'state_dict', 'model'):
        if isinstance(checkpoint.get(key), dict):
            return list(checkpoint[key])
    return list(checkpoint)


@torch.no_grad()
def load_init_weights(model: nn.Module, source: str, model_name: str) -> str:
    """Load the weights `source` holds into `model` (in place); returns the line that says what
    was loaded. A classifier of another shape (another class count, or none) is not loaded: the
    model's is re-initialised with `reset_classifier`.

    Raises:
        InitError: as `read_weights`, or weights whose shapes do not fit the model.
    """
    try:
        state_dict = checkpoint_filter_fn(read_weights(source, model_name), model)
    except KeyError as e:
        raise InitError(f'{source}: not SG-Former weights (no {e})') from None
    theirs = {k: state_dict.pop(k) for k in CLASSIFIER if k in state_dict}
    ours = {k: v for k, v in model.state_dict().items() if k in CLASSIFIER}
    note = ''
    if {k: v.shape for k, v in theirs.items()} == {k: v.shape for k, v in ours.items()}:
        state_dict.update(theirs)
    else:
        model.reset_classifier(model.num_classes)
        classes = theirs['head.weight'].shape[0] if 'head.weight' in theirs else 0
        note = f'; classifier re-initialised for {model.num_classes} classes (the weights have {classes})'
    try:
        missing, unexpected = model.load_state_dict(state_dict, strict=False)
    except RuntimeError as e:  # a tensor of another shape: another size of model
        raise InitError(f'{source}: does not fit {model_name} ({str(e).splitlines()[-1].strip()[:200]})') from None
    missing = [k for k in missing if k not in CLASSIFIER]
    if missing or unexpected:
        raise InitError(f'{source}: does not fit {model_name} (missing: {missing[:3]}, unexpected: {unexpected[:3]})')
    return f'init_from {source}: loaded {len(state_dict)} tensors into {model_name}{note}'
