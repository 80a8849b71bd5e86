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
import statistics
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F

from sgformer.eval.metrics import timed
from sgformer.io import write_json_atomic

from common import OFFICIAL_MODELS, alternate, load_official, markdown_table, profile_events


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--official', type=Path, required=True, help='checkout holding the official sgformer.py, pos_embed.py')
    p.add_argument('--variant', default='sgformer_s', choices=OFFICIAL_MODELS)
    p.add_argument('--batch', type=int, default=8, help='training batch (inference: twice this)')
    p.add_argument('--img-size', type=int, default=224)
    p.add_argument('--steps', type=int, default=5)
    p.add_argument('--profile', action='store_true', help='split one training step of each by operator kind')
    p.add_argument('--out', type=Path, default=Path(__file__).parent / 'results' / 'bench_vs_official.json')
    return p.parse_args(argv)


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
    split = dict.fromkeys([*OP_KINDS, 'other'], 0.0)
    for event in profile_events(step).key_averages():
        split[op_kind(event.key)] += event.self_cpu_time_total / 1e6
    return split


def print_profile(splits: dict[str, dict[str, float]]) -> float:
    """Print the per-kind table; returns the bound on the training speed-up."""
    totals = {name: sum(split.values()) for name, split in splits.items()}
    rows = [(kind, f"{splits['official'][kind]:.3f}", f"{splits['ours'][kind]:.3f}") for kind in splits['ours']]
    rows.append(('total (under the profiler)', f"{totals['official']:.3f}", f"{totals['ours']:.3f}"))
    print('\n' + markdown_table(('self CPU s, one training step', 'official', 'ours'), rows))
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
    steps = {'train': train_step, 'infer': infer_step}  # each returns the seconds of one timed call
    times = alternate({f'{name}_{kind}_s': lambda step=step, model=model: step(model)
                       for name, model in models.items() for kind, step in steps.items()}, args.steps)
    medians = {key: statistics.median(seconds) for key, seconds in times.items()}
    result = dict(medians, train_speedup=medians['official_train_s'] / medians['ours_train_s'],
                  infer_speedup=medians['official_infer_s'] / medians['ours_infer_s'],
                  config={k: str(v) for k, v in vars(args).items()}, threads=torch.get_num_threads())
    print(f"{args.variant} batch {args.batch} @ {args.img_size}, {torch.get_num_threads()} threads, {args.steps} steps")
    print(markdown_table(('', 'official s', 'ours s', 'speed-up'), [
        (kind, f"{medians[f'official_{kind}_s']:.3f}", f"{medians[f'ours_{kind}_s']:.3f}",
         f"{result[f'{kind}_speedup']:.2f}x")
        for kind in ('train', 'infer')]))
    if args.profile:
        result['profile_s'] = {name: profile_step(lambda: train_step(model)) for name, model in models.items()}
        result['train_speedup_bound'] = print_profile(result['profile_s'])
    write_json_atomic(args.out, result)


if __name__ == '__main__':
    main()
