"""What progressive resizing saves: the demo's nano model trained on the sample by the train stage,
(a) at a fixed 96 px and (b) from 64 to 96 px (`train.progressive_resize`), the same epochs, batch
and recipe; validation at 96 px in both. Prints wall time, gpu_hours (process-hours on a CPU) and
the final EMA top-1 at 96 px of each, and their ratios; writes JSON.

    python benchmarks/bench_budget.py                        # the demo's sample and settings, 2 runs
    python benchmarks/bench_budget.py --start-ramp 3 --end-ramp 5 --epochs 8

Target: (b) takes at most 0.75x the wall time of (a), with a top-1 within 2 points. The runs go one
after the other in the same conditions (same sample, betons, numba cache); each is a fresh process,
start-up included, as `dvc repro` runs the stage.
"""
import argparse
import csv
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from sgformer.config import Convert, Sample  # noqa: E402
from sgformer.datasets.beton import convert_folder  # noqa: E402
from sgformer.datasets.sample import write_sample  # noqa: E402
from sgformer.eval.metrics import timed  # noqa: E402
from sgformer.io import write_json_atomic  # noqa: E402

from common import environment, markdown_table, target, target_lines  # noqa: E402


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--epochs', type=int, default=8, help='train.epochs of both runs (the demo: 8)')
    p.add_argument('--img-size', type=int, default=96, help='the final (and validation) side')
    p.add_argument('--min-size', type=int, default=64, help='progressive_resize.min_size of run (b)')
    p.add_argument('--start-ramp', type=int, default=4, help='progressive_resize.start_ramp of run (b)')
    p.add_argument('--end-ramp', type=int, default=6, help='progressive_resize.end_ramp of run (b)')
    p.add_argument('--train-per-class', type=int, default=Sample().train_per_class,
                   help="sample.train_per_class (the demo's by default; fewer for a quick check)")
    p.add_argument('--out', type=Path, default=Path(__file__).parent / 'results' / 'bench_budget.json')
    return p.parse_args(argv)


def params_file(folder: Path, args, ramp: dict | None) -> Path:
    """The demo's params (the schema defaults) with the sample and betons in `folder`, one nano variant."""
    train = dict(epochs=args.epochs, img_size=args.img_size, progressive_resize=ramp)
    params = dict(data=dict(source=str(folder / 'sample'), betons=str(folder / 'betons')), train=train,
                  tracking=dict(tracking_uri=f'sqlite:///{folder}/mlflow.db', offline_dir=str(folder / 'offline')),
                  variants=dict(nano=dict(model='sgformer_nano')))
    path = folder / f"params-{'ramp' if ramp else 'fixed'}.yaml"
    path.write_text(yaml.safe_dump(params))
    return path


def train(folder: Path, params: Path, name: str) -> dict:
    """One train stage run: its wall seconds and its final metrics."""
    out = folder / name
    command = [sys.executable, '-m', 'pipeline.train', '--params', str(params), '--variant', 'nano',
               '--report', str(folder / 'report.json'), '--models', str(out / 'models'),
               '--checkpoints', str(out / 'checkpoints'), '--plots', str(out / 'plots')]
    env = dict(os.environ, PYTHONWARNINGS='ignore', MLFLOW_DISABLE_TELEMETRY='true', PYTHONPATH=str(REPO))
    seconds = timed(lambda: subprocess.run(command, cwd=REPO, env=env, check=True, stdout=subprocess.DEVNULL))
    with open(out / 'plots' / 'train' / 'nano.tsv') as f:  # every epoch's record, the last one final
        history = list(csv.DictReader(f, delimiter='\t'))
    return dict(wall_s=seconds, gpu_hours=float(history[-1]['gpu_hours']), top1=float(history[-1]['val_ema_top1']),
                sides=[int(float(epoch['img_size'])) for epoch in history])


def main(argv=None) -> None:
    args = parse_args(argv)
    ramp = dict(min_size=args.min_size, start_ramp=args.start_ramp, end_ramp=args.end_ramp)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        write_sample(folder / 'sample', Sample(train_per_class=args.train_per_class))
        convert_folder(folder / 'sample', folder / 'betons', Convert(), report=folder / 'report.json')
        runs = {'fixed': train(folder, params_file(folder, args, None), 'fixed'),
                'progressive': train(folder, params_file(folder, args, ramp), 'progressive')}
    fixed, progressive = runs['fixed'], runs['progressive']
    ratios = dict(wall=progressive['wall_s'] / fixed['wall_s'], gpu_hours=progressive['gpu_hours'] / fixed['gpu_hours'],
                  top1_points=100 * (progressive['top1'] - fixed['top1']))
    targets = dict(
        wall=target(ratios['wall'], 0.75, 'progressive wall time <= 0.75x the fixed run', at_least=False),
        top1=target(-ratios['top1_points'], 2.0, 'progressive top-1 within 2 points below the fixed run',
                    at_least=False))
    print(f'sgformer_nano on the sample, {args.epochs} epochs, validation at {args.img_size} px (train stage runs)')
    print(markdown_table(('run', 'sides per epoch', 'wall s', 'gpu_hours', f'EMA top-1 @ {args.img_size}'), [
        (name, ' '.join(map(str, r['sides'])), f"{r['wall_s']:.0f}", f"{r['gpu_hours']:.4f}", f"{r['top1']:.4f}")
        for name, r in runs.items()]))
    print(f"progressive / fixed: wall {ratios['wall']:.2f}x, gpu_hours {ratios['gpu_hours']:.2f}x, "
          f"top-1 {ratios['top1_points']:+.1f} points")
    print(target_lines(targets))
    write_json_atomic(args.out, dict(environment('cpu'), settings=vars(args) | dict(out=str(args.out)), runs=runs,
                                     ratios=ratios, targets=targets))


if __name__ == '__main__':
    main()
