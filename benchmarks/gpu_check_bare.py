"""Check 1 of `gpu_check.py`: the bare model step (forward + backward under autocast, fused AdamW,
zero_grad) and inference of this implementation and of the official code, eager and compiled: img/s,
peak GiB and the seconds of the first (compiling) calls. `s` is gpu_check's `Settings`."""
from pathlib import Path
from typing import TYPE_CHECKING

import timm
import torch

from sgformer.runtime import apply_compile

from common import (OFFICIAL_MODELS, bare_train_step, failure, first_then_steady, free, inference_call, load_official,
                    resident_allocated)

if TYPE_CHECKING:
    from gpu_check import Settings


def build_model(source: str, name: str, s: 'Settings', official: Path | None) -> torch.nn.Module:
    if source == 'official':
        model = getattr(load_official(official), name)(num_classes=s.num_classes, drop_path_rate=s.drop_path)
    else:
        model = timm.create_model(name, img_size=s.img_size, num_classes=s.num_classes, drop_path_rate=s.drop_path)
        assert type(model).__module__.startswith('sgformer.'), f'{name} is not this implementation'
    return model.to(s.device)


def bare_step(model, s: 'Settings', device: torch.device):
    """`bare_train_step` with fused AdamW on one float batch."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)
    x = torch.randn(s.batch, 3, s.img_size, s.img_size, device=device)
    return bare_train_step(model, optimizer, x, torch.randint(0, s.num_classes, (s.batch,), device=device), s.dtype)


def measure_bare(model, s: 'Settings', device: torch.device, before: float,
                 first: tuple[str, str] = ('first_train_step_s', 'first_infer_call_s')) -> dict:
    """Train and inference img/s of `model` (compiled or not) in the bare step, peak GiB over `before`
    (what was resident before the model was built) and the seconds of the first calls (keys `first`)."""
    model.train()
    first_train, train_s, train_peak = first_then_steady(bare_step(model, s, device), **s.timing)
    free()
    model.eval()
    x = torch.randn(s.infer_batch, 3, s.img_size, s.img_size, device=device)
    first_infer, infer_s, infer_peak = first_then_steady(inference_call(model, x, s.dtype), **s.timing)
    model.train()
    return {'train_img_s': s.batch / train_s, 'infer_img_s': s.infer_batch / infer_s,
            'train_peak_gib': None if train_peak is None else train_peak - before,
            'infer_peak_gib': None if infer_peak is None else infer_peak - before,
            first[0]: first_train, first[1]: first_infer}


def measure_source(source: str, name: str, s: 'Settings', official: Path | None,
                   kinds: tuple[str, ...] = ('eager', 'compiled')) -> tuple[dict, torch.nn.Module]:
    """Bare-step numbers of one implementation, eager then compiled (compiled only with `s.compile`;
    a failing compile is recorded, not raised). Returns them and the model (compiled when that was
    measured and worked)."""
    device = torch.device(s.device)
    before = resident_allocated(device)
    model = build_model(source, name, s, official)
    result = {}
    if 'eager' in kinds:
        result['eager'] = measure_bare(model, s, device, before)
        free()
    if 'compiled' in kinds and s.compile:
        try:
            apply_compile(model)  # model.compile(dynamic=False), with room for one graph per block kind and mode
            result['compiled'] = measure_bare(model, s, device, before, first=('compile_train_s', 'compile_infer_s'))
        except Exception as e:  # noqa: BLE001
            result['compiled'] = failure(e)
    return result, model


def compare_model(name: str, s: 'Settings', official: Path | None, keep: bool = False,
                  official_kinds: tuple[str, ...] = ('eager', 'compiled')) -> tuple[dict, tuple | None]:
    """`{source: {'eager': ..., 'compiled': ...}}` for ours and, with a checkout, the official code; a
    failure of one implementation is recorded as its `error`. With `keep`, also returns `(our model,
    'compiled' | 'eager')`, compiled when that worked: the reference of the production step."""
    result, reference = {}, None
    for source in ['ours'] + (['official'] if official and name in OFFICIAL_MODELS else []):
        try:
            kinds = official_kinds if source == 'official' else ('eager', 'compiled')
            result[source], model = measure_source(source, name, s, official, kinds)
        except Exception as e:  # noqa: BLE001
            result[source] = failure(e)
            continue
        if keep and source == 'ours':
            compiled = 'error' not in result[source].get('compiled', {'error': 'not compiled'})
            reference = (model, 'compiled') if compiled else (build_model(source, name, s, official), 'eager')
        del model
        free()
    if official and name not in OFFICIAL_MODELS:
        result['official'] = {'note': f'the official code has no {name}'}
    return result, reference
