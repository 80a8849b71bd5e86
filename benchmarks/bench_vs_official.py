"""This implementation against the official `sgformer.py`, in one process, alternating step by step.

Separate processes on a small, noisy machine make single rows vary by ±15 %; alternating the two
models in one process exposes both to the same noise, so their ratio is steadier. Prints the
median seconds per training step (forward + backward) and per inference batch, and the ratios.

`--profile` then runs one more training step of each under `torch.profiler` and splits its self
CPU time by kind of operator. Matrix products and convolutions are the same arithmetic in both
implementations, so the official step time over this implementation's share of them bounds the
training speed-up any rewrite of the rest can reach.

    python benchmarks/bench_vs_official.py --official /path/to/SG-Former [--variant sgformer_s --batch 8 --steps 5]
"""
import argparse
import importlib.util
import json
import statistics
import sys
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F

from sgformer.eval.metrics import timed


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--official', type=Path, required=True, help='checkout holding the official sgformer.py, pos_embed.py')
    p.add_argument('--variant', default='sgformer_s', choices=['sgformer_s', 'sgformer_m', 'sgformer_b'])
    p.add_argument('--batch', type=int, default=8, help='training batch (inference: twice this)')
    p.add_argument('--img-size', type=int, default=224)
    p.add_argument('--steps', type=int, default=5)
    p.add_argument('--profile', action='store_true', help='split one training step of each by operator kind')
    p.add_argument('--out', type=Path, default=Path(__file__).parent / 'results' / 'bench_vs_official.json')
    return p.parse_args(argv)


def load_official(checkout: Path):
    import numpy as np
    if not hasattr(np, 'float'):  # the official pos_embed.py predates NumPy 1.24
        np.float = float
    sys.path.append(str(checkout))
    spec = importlib.util.spec_from_file_location('sgformer_official', checkout / 'sgformer.py')
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


# Operator kinds of the profile, matched on the aten name; the first match wins.
OP_KINDS = {
    'matmul (Linear)': ('aten::mm', 'aten::addmm', 'aten::linear'),
    'convolution': ('aten::mkldnn_convolution', 'aten::convolution_backward', 'aten::_convolution'),
    'attention': ('aten::_scaled_dot_product', 'aten::bmm', 'aten::_softmax', 'aten::baddbmm'),
    'copies (permute, cat, contiguous)': ('aten::copy_', 'aten::cat', 'aten::clone'),
    'activation and norms': ('aten::gelu', 'aten::native_layer_norm', 'aten::native_group_norm'),
    'sort, gather, scatter': ('aten::sort', 'aten::argsort', 'aten::gather', 'aten::scatter'),
}


def op_kind(name: str) -> str:
    return next((kind for kind, prefixes in OP_KINDS.items() if name.startswith(prefixes)), 'other')


def profile_step(step) -> dict[str, float]:
    """Self CPU seconds of one call of `step`, summed per operator kind."""
    from torch.profiler import ProfilerActivity, profile
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        step()
    split = dict.fromkeys([*OP_KINDS, 'other'], 0.0)
    for event in prof.key_averages():
        split[op_kind(event.key)] += event.self_cpu_time_total / 1e6
    return split


def print_profile(splits: dict[str, dict[str, float]]) -> float:
    """Print the per-kind table; returns the bound on the training speed-up."""
    totals = {name: sum(split.values()) for name, split in splits.items()}
    print('\n| self CPU s, one training step | official | ours |\n|---|---|---|')
    for kind in splits['ours']:
        print(f"| {kind} | {splits['official'][kind]:.3f} | {splits['ours'][kind]:.3f} |")
    print(f"| total (under the profiler) | {totals['official']:.3f} | {totals['ours']:.3f} |")
    shared = splits['ours']['matmul (Linear)'] + splits['ours']['convolution']
    bound = totals['official'] / shared
    print(f'\nmatrix products + convolutions of ours: {shared:.3f} s; with everything else free the '
          f'training speed-up would be {bound:.2f}x')
    return bound


def main(argv=None) -> None:
    args = parse_args(argv)
    warnings.filterwarnings('ignore')
    from sgformer.models import sgformer as ours
    official = load_official(args.official)
    torch.manual_seed(0)
    models = {'official': getattr(official, args.variant)().train(), 'ours': getattr(ours, args.variant)().train()}
    x = torch.randn(args.batch, 3, args.img_size, args.img_size)
    y = torch.randint(0, 1000, (args.batch,))
    x_infer = torch.randn(2 * args.batch, 3, args.img_size, args.img_size)

    def train_step(model) -> float:
        def step():
            F.cross_entropy(model(x), y).backward()
            model.zero_grad(set_to_none=True)
        return timed(step)

    def infer_step(model) -> float:
        model.eval()
        with torch.inference_mode():
            seconds = timed(lambda: model(x_infer))
        model.train()
        return seconds

    for model in models.values():
        train_step(model)
    times = {(name, kind): [] for name in models for kind in ('train', 'infer')}
    for _ in range(args.steps):
        for name, model in models.items():
            times[name, 'train'].append(train_step(model))
            times[name, 'infer'].append(infer_step(model))
    medians = {f'{name}_{kind}_s': statistics.median(v) for (name, kind), v in times.items()}
    result = dict(medians, train_speedup=medians['official_train_s'] / medians['ours_train_s'],
                  infer_speedup=medians['official_infer_s'] / medians['ours_infer_s'],
                  config={k: str(v) for k, v in vars(args).items()}, threads=torch.get_num_threads())
    print(f"{args.variant} batch {args.batch} @ {args.img_size}, {torch.get_num_threads()} threads, {args.steps} steps")
    print('| | official s | ours s | speed-up |\n|---|---|---|---|')
    for kind in ('train', 'infer'):
        print(f"| {kind} | {medians[f'official_{kind}_s']:.3f} | {medians[f'ours_{kind}_s']:.3f} | "
              f"{result[f'{kind}_speedup']:.2f}x |")
    if args.profile:
        result['profile_s'] = {name: profile_step(lambda: train_step(model)) for name, model in models.items()}
        result['train_speedup_bound'] = print_profile(result['profile_s'])
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))


if __name__ == '__main__':
    main()
