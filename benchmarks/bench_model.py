"""Throughput and memory of SG-Former variants beside timm peers of similar FLOPs, in one run.

Each model is measured in its own subprocess, so peak memory is per model and nothing leaks
between them. Prints a markdown table and writes JSON.

    python benchmarks/bench_model.py                                   # CPU, batch 8, 224
    python benchmarks/bench_model.py --device cuda --batch 128 --compile
    python benchmarks/bench_model.py --official ~/src/SG-Former        # times the official sgformer.py too

Ratios are against `--baseline` (default: the first peer) from the same run.
"""
import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import torch

from sgformer.eval.metrics import median_seconds, timed
from sgformer.io import write_json_atomic

from common import (MIB, OFFICIAL_MODELS, bare_train_step, device_name, inference_call, load_official,
                    markdown_table, peak_allocated, reset_peak, rss_peak)

DEFAULT_VARIANTS = ['sgformer_nano', 'sgformer_tiny', 'sgformer_s']
DEFAULT_PEERS = ['swin_tiny_patch4_window7_224', 'pvt_v2_b2', 'deit_small_patch16_224']


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--variants', nargs='*', default=DEFAULT_VARIANTS, help='SG-Former variants (this package)')
    p.add_argument('--peers', nargs='*', default=DEFAULT_PEERS, help='timm models to compare against')
    p.add_argument('--official', type=Path, help='checkout of the official SG-Former repo (sgformer.py, pos_embed.py): '
                   'times its sgformer_s/m/b that match --variants')
    p.add_argument('--baseline', help='model the ratios are computed against (default: first peer)')
    p.add_argument('--device', default='cuda' if torch.cuda.is_available() else 'cpu')
    p.add_argument('--batch', type=int, default=8, help='training batch size')
    p.add_argument('--infer-batch', type=int, help='inference batch size (default: 2 x --batch)')
    p.add_argument('--img-size', type=int, nargs='+', default=[224], help='side, or height width')
    p.add_argument('--steps', type=int, default=5, help='timed steps')
    p.add_argument('--warmup', type=int, default=2, help='untimed steps first')
    p.add_argument('--compile', action='store_true', help='torch.compile each model')
    p.add_argument('--threads', type=int, help='torch CPU threads (default: torch default)')
    p.add_argument('--out', type=Path, default=Path(__file__).parent / 'results' / 'bench_model.json')
    p.add_argument('--worker', help=argparse.SUPPRESS)
    return p.parse_args(argv)


# --- worker: one model, one process ----------------------------------------------------------

def _build(name: str, source: str, official: Path | None, img_size: tuple[int, int]):
    import timm
    if source == 'official':
        return getattr(load_official(official), name)()
    if source == 'ours':
        from sgformer.models import sgformer as ours
        return getattr(ours, name)(img_size=img_size)
    return timm.create_model(name, img_size=img_size) if 'swin' in name or 'deit' in name else timm.create_model(name)


def _time_steps(step, steps: int, warmup: int, device) -> tuple[float, float]:
    """Returns (seconds of the first step, median seconds per timed step)."""
    first = timed(step, device)
    return first, median_seconds(step, steps=steps, warmup=max(warmup - 1, 0), device=device)


def run_worker(spec: dict) -> dict:
    from sgformer.flops import count_macs  # also counts the CPU SDPA kernel
    if spec['threads']:
        torch.set_num_threads(spec['threads'])
    device = torch.device(spec['device'])
    rss_before = rss_peak(MIB)
    h, w = spec['img_size']
    model = _build(spec['name'], spec['source'], spec['official'] and Path(spec['official']), (h, w)).to(device)
    params = sum(p.numel() for p in model.parameters())
    x = torch.randn(spec['infer_batch'], 3, h, w, device=device)
    model.eval()
    macs = count_macs(model, (3, h, w), device=device)
    dtype = torch.bfloat16 if device.type == 'cuda' else torch.float32  # autocast on CUDA only
    runner = torch.compile(model, dynamic=False) if spec["compile"] else model
    infer_first, infer_s = _time_steps(inference_call(runner, x, dtype), spec['steps'], spec['warmup'], device)

    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    xt = torch.randn(spec['batch'], 3, h, w, device=device)
    yt = torch.randint(0, 1000, (spec['batch'],), device=device)
    reset_peak(device)
    rss_train_start = rss_peak(MIB)
    train_first, train_s = _time_steps(bare_train_step(runner, opt, xt, yt, dtype), spec['steps'], spec['warmup'],
                                       device)
    peak_mib = peak_allocated(device, MIB)
    if peak_mib is None:  # CPU: peak RSS of this process above what it held before the model was built
        peak_mib = rss_peak(MIB) - rss_before
    return dict(
        model=spec['label'],
        params_m=params / 1e6,
        gmacs=macs / 1e9,
        infer_img_s=spec['infer_batch'] / infer_s,
        train_img_s=spec['batch'] / train_s,
        train_peak_mib=peak_mib,
        first_train_step_s=train_first,
        first_infer_step_s=infer_first,
        rss_grew_before_train=rss_train_start > rss_before,
    )


# --- driver ------------------------------------------------------------------------------------

def _specs(args) -> list[dict]:
    img_size = args.img_size * 2 if len(args.img_size) == 1 else args.img_size[:2]
    common = dict(device=args.device, batch=args.batch, infer_batch=args.infer_batch or 2 * args.batch,
                  img_size=img_size, steps=args.steps, warmup=args.warmup, compile=args.compile,
                  threads=args.threads, official=str(args.official) if args.official else None)
    specs = []
    for name in args.variants:
        specs.append(dict(common, name=name, source='ours', label=name))
        if args.official and name in OFFICIAL_MODELS:
            specs.append(dict(common, name=name, source='official', label=f'{name} (official code)'))
    specs += [dict(common, name=name, source='timm', label=name) for name in args.peers]
    return specs


def _measure(spec: dict) -> dict:
    cmd = [sys.executable, __file__, '--worker', json.dumps(spec)]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=dict(os.environ, PYTHONWARNINGS='ignore'))
    if proc.returncode:
        return dict(model=spec['label'], error=proc.stderr.strip().splitlines()[-1] if proc.stderr else 'failed')
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _table(rows: list[dict], baseline: str) -> str:
    base = next((r for r in rows if r['model'] == baseline and 'error' not in r), None)
    header = ('model', 'params (M)', 'GMACs', 'infer img/s', 'train img/s', f'train × {baseline}',
              f'infer × {baseline}', 'train peak MiB', 'first train step s')
    cells = []
    for r in rows:
        if 'error' in r:
            cells.append((r['model'], f"error: {r['error']}", *[''] * 7))
            continue
        tr = r['train_img_s'] / base['train_img_s'] if base else float('nan')
        inf = r['infer_img_s'] / base['infer_img_s'] if base else float('nan')
        cells.append((r['model'], f"{r['params_m']:.2f}", f"{r['gmacs']:.2f}", f"{r['infer_img_s']:.1f}",
                      f"{r['train_img_s']:.1f}", f'{tr:.2f}', f'{inf:.2f}', f"{r['train_peak_mib']:.0f}",
                      f"{r['first_train_step_s']:.1f}"))
    return markdown_table(header, cells)


def main(argv=None) -> None:
    args = parse_args(argv)
    if args.worker:
        print(json.dumps(run_worker(json.loads(args.worker))))
        return
    specs = _specs(args)
    baseline = args.baseline or (args.peers[0] if args.peers else specs[0]['label'])
    rows = []
    for spec in specs:
        print(f"measuring {spec['label']} ...", file=sys.stderr, flush=True)
        rows.append(_measure(spec))
    header = (f"device={args.device} ({device_name(args.device)}, {torch.get_num_threads()} threads) "
              f"batch={args.batch} infer_batch={specs[0]['infer_batch']} img={specs[0]['img_size']} "
              f"steps={args.steps} compile={args.compile} torch={torch.__version__}")
    print(header)
    print(_table(rows, baseline))
    write_json_atomic(args.out, dict(config=vars(args) | dict(out=str(args.out), official=str(args.official)),
                                     header=header, baseline=baseline, results=rows))


if __name__ == '__main__':
    main()
