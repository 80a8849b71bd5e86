"""Seconds from a new process to the end of one epoch of the FFCV train and val loaders, with
numba's disk cache for FFCV's compiled code cold (an empty cache folder: the first process after an
install) and warm (every later process: each train stage, evaluate stage and rank).

Every process imports FFCV, builds the train and val loaders a train stage builds and reads one
epoch of each from a small beton, so nearly all of its time is start-up: imports and numba's
compilation of FFCV's code. The rounds alternate cold and warm.

    python benchmarks/bench_startup.py                 # 3 rounds, 1 loader worker
    python benchmarks/bench_startup.py --workers 2     # FFCV compiles its parallel flip instead
"""
import argparse
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from sgformer.config import Convert, Sample  # noqa: E402
from sgformer.datasets.beton import convert_folder  # noqa: E402
from sgformer.datasets.sample import write_sample  # noqa: E402
from sgformer.eval.metrics import timed  # noqa: E402
from sgformer.io import write_json_atomic  # noqa: E402

from common import alternate, markdown_table  # noqa: E402

LOADERS = '''
import sys
from sgformer.config import Loader
from sgformer.loader import create_ffcv_loader
betons, workers = sys.argv[1], int(sys.argv[2])
for split in ('train', 'val'):
    loader = create_ffcv_loader(f'{betons}/{split}.beton', train=split == 'train', batch_size=8, img_size=64,
                                loader=Loader(num_workers=workers))
    for images, labels in loader:
        pass
'''


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--rounds', type=int, default=3)
    p.add_argument('--workers', type=int, default=1, help='loader.num_workers')
    p.add_argument('--out', type=Path, default=Path(__file__).parent / 'results' / 'bench_startup.json')
    return p.parse_args(argv)


def process_seconds(betons: Path, workers: int, cache: Path) -> float:
    env = dict(os.environ, NUMBA_CACHE_DIR=str(cache), PYTHONWARNINGS='ignore', PYTHONPATH=str(REPO))
    return timed(lambda: subprocess.run([sys.executable, '-c', LOADERS, str(betons), str(workers)], env=env,
                                        check=True, capture_output=True))


def main(argv=None) -> None:
    args = parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        write_sample(tmp / 'src', Sample(num_classes=3, train_per_class=12, val_per_class=4, bad_files=False))
        convert_folder(tmp / 'src', tmp / 'betons', Convert(max_resolution=80, num_workers=1), report=tmp / 'report.json')
        caches = []

        def cold() -> float:  # a new, empty cache folder
            caches.append(tmp / f'cache-{len(caches)}')
            return process_seconds(tmp / 'betons', args.workers, caches[-1])

        def warm() -> float:  # the folder the cold process just filled
            return process_seconds(tmp / 'betons', args.workers, caches[-1])

        runs = alternate({'cold': cold, 'warm': warm}, args.rounds)
        cold, warm = runs['cold'], runs['warm']
    result = dict(workers=args.workers, cold_s=cold, warm_s=warm, cold_median_s=statistics.median(cold),
                  warm_median_s=statistics.median(warm))
    result['cold_over_warm'] = result['cold_median_s'] / result['warm_median_s']
    print(f'FFCV train + val loaders, one epoch each, in a new process ({args.workers} worker(s), {args.rounds} rounds)')
    print(markdown_table(('numba disk cache', 'seconds (median)', 'runs'), [
        (what, f'{result[f"{key}_median_s"]:.1f}', ', '.join(f'{s:.1f}' for s in result[f'{key}_s']))
        for key, what in (('cold', 'cold (empty)'), ('warm', 'warm'))]))
    print(f'cold / warm: {result["cold_over_warm"]:.2f}x')
    write_json_atomic(args.out, result)


if __name__ == '__main__':
    main()
