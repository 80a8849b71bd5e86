"""Export of trained weights: unsharded safetensors plus a JSON model card, loadable by plain timm:

    timm.create_model(card['model'], pretrained=True, **card['model_kwargs'],
                      pretrained_cfg_overlay=dict(file='ema.safetensors', num_classes=card['model_kwargs']['num_classes']))
"""
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from ..io import write_atomic, write_json_atomic


def save_weights(state_dict: dict[str, torch.Tensor], path: str | Path) -> None:
    """Full (unsharded) state dict -> safetensors, written atomically."""
    tensors = {k: v.detach().cpu().contiguous() for k, v in state_dict.items()}
    write_atomic(path, lambda tmp: save_file(tensors, str(tmp), metadata={'format': 'pt'}))


def write_model_card(path: str | Path, *, variant: str, model: str, model_kwargs: dict[str, Any],
                     weights: dict[str, str], metrics: dict[str, float], class_index: dict[str, int] | None) -> dict:
    """A small JSON description of an export: what to build, which files, how well it did."""
    card = dict(variant=variant, model=model, model_kwargs=model_kwargs, weights=weights, metrics=metrics,
                class_index=class_index)
    write_json_atomic(path, card)
    return card
