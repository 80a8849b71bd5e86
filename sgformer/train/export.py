"""Export of trained weights: unsharded safetensors plus a JSON model card, loadable by plain timm:

    timm.create_model(card['model'], pretrained=True, **card['model_kwargs'],
                      pretrained_cfg_overlay=dict(file='ema.safetensors', num_classes=card['model_kwargs']['num_classes']))

or by `load_export(folder)`.
"""
import json
from pathlib import Path
from typing import Any

import timm
import torch
from safetensors.torch import load_file, save_file

from ..io import write_atomic, write_json_atomic
from ..models.sgformer import checkpoint_filter_fn


def save_weights(state_dict: dict[str, torch.Tensor], path: str | Path) -> None:
    """Full (unsharded) state dict -> safetensors, written atomically."""
    tensors = {k: v.detach().cpu().contiguous() for k, v in state_dict.items()}
    write_atomic(path, lambda tmp: save_file(tensors, str(tmp), metadata={'format': 'pt'}))


def write_model_card(path: str | Path, *, variant: str, model: str, model_kwargs: dict[str, Any],
                     weights: dict[str, str], metrics: dict[str, float], class_index: dict[str, int] | None,
                     mlflow_run_id: str | None = None) -> dict:
    """A small JSON description of an export: what to build, which files, how well it did, which
    MLflow run trained it (the evaluate stage logs into the same run)."""
    card = dict(variant=variant, model=model, model_kwargs=model_kwargs, weights=weights, metrics=metrics,
                class_index=class_index, mlflow_run_id=mlflow_run_id)
    write_json_atomic(path, card)
    return card


def load_export(folder: str | Path, weights: str = 'ema', **model_kwargs) -> tuple[torch.nn.Module, dict]:
    """Build the model of an export folder and load one of its weight files.

    Args:
        folder: holds `card.json` and the safetensors it names.
        weights: a key of the card's `weights` ('ema' or 'model').
        model_kwargs: override the card's, e.g. `img_size` to run at another resolution.

    Returns:
        `(model in eval mode, card)`.
    """
    folder = Path(folder)
    card = json.loads((folder / 'card.json').read_text())
    if weights not in card['weights']:
        raise KeyError(f"{folder / 'card.json'} has no {weights!r} weights (has: {', '.join(card['weights'])})")
    model = timm.create_model(card['model'], **{**card['model_kwargs'], **model_kwargs})
    # the filter resamples pos_embed when img_size differs from the trained one
    model.load_state_dict(checkpoint_filter_fn(load_file(str(folder / card['weights'][weights])), model))
    return model.eval(), card
