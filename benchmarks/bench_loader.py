"""Images/s of the FFCV train loader against the torchvision ImageFolder baseline, and of conversion.

Both loaders decode, random-resized-crop (scale 0.08-1, ratio 3/4-4/3) and flip to the same
resolution with the same number of workers and yield the same uint8 batches; `--augment` also
runs the batched train recipe (RandAugment, erasing, mixup) after each. The data is the sample set
enlarged to ImageNet-like files (sides 350-400 px, JPEG quality 90), written to a temporary folder.
Each loader runs `--epochs` epochs, alternating with the others; the first (numba JIT, worker
start-up) is not timed.

A second table splits the work of one image, on one thread, into the steps each loader runs for
the same random crops: PIL decode + torchvision antialiased resize (the baseline), libffcv's
turbojpeg decode and its `resize_crop` (OpenCV `INTER_AREA`, what FFCV runs for every image).
`--workers` threads doing nothing but FFCV's decode and resize give a ceiling on FFCV's images/s,
printed against the measured baseline.

    python benchmarks/bench_loader.py                          # 3000 images, 2 workers, 224 px
    python benchmarks/bench_loader.py --per-class 100 --epochs 2 --img-size 160
"""
import argparse
import functools
import io
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sgformer.config import Augment, Convert, Loader, Sample  # noqa: E402
from sgformer.loader import create_ffcv_loader, create_folder_loader  # noqa: E402
from sgformer.augment.transforms import TrainTransform  # noqa: E402
from sgformer.datasets.beton import convert_folder  # noqa: E402
from sgformer.datasets.sample import write_sample  # noqa: E402
from sgformer.eval.metrics import timed  # noqa: E402
from sgformer.io import write_json_atomic  # noqa: E402

from common import MIB, alternate, markdown_table  # noqa: E402

# The official recipe's crops and batch augmentation (the ImageNet setting being benchmarked).
OFFICIAL = Augment(scale=(0.08, 1.0), auto_augment='rand-m9-mstd0.5-inc1', reprob=0.25, mixup=0.8, cutmix=1.0)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--classes', type=int, default=10)
    p.add_argument('--per-class', type=int, default=300, help='training images per class')
    p.add_argument('--min-size', type=int, default=350)
    p.add_argument('--max-size', type=int, default=400)
    p.add_argument('--img-size', type=int, default=224, help='crop side produced by both loaders')
    p.add_argument('--batch', type=int, default=64)
    p.add_argument('--workers', type=int, default=2)
    p.add_argument('--epochs', type=int, default=3, help='epochs per loader; all but the first are timed')
    p.add_argument('--write-modes', nargs='+', default=['proportion', 'raw'],
                   choices=['proportion', 'jpg', 'raw', 'smart'], help='beton write modes to time (one beton each)')
    p.add_argument('--augment', action='store_true', help='also time the batched train augmentation')
    p.add_argument('--per-image', type=int, default=300, help='images in the one-thread per-step table (0: skip)')
    p.add_argument('--out', type=Path, default=Path(__file__).parent / 'results' / 'bench_loader.json')
    return p.parse_args(argv)


def _epoch(loader, transform=None) -> tuple[int, float]:
    """Images and seconds of one epoch of `loader` (with `transform` of every batch)."""
    images = 0

    def consume():
        nonlocal images
        for x, y in loader:
            if transform is not None:
                transform(x, y)
            images += len(x)

    seconds = timed(consume)
    return images, seconds


def time_interleaved(loaders: dict, epochs: int, transform=None) -> dict[str, float]:
    """Images/s of each loader over all epochs but the first; epochs alternate between loaders, so a
    load change on the machine hits every loader alike."""
    runs = alternate({name: functools.partial(_epoch, loader, transform) for name, loader in loaders.items()},
                     epochs - 1, discard=1)
    return {name: sum(n for n, _ in epochs) / sum(s for _, s in epochs) for name, epochs in runs.items()}


def _mean_ms(fn, items) -> float:
    """Milliseconds per item of `fn` over all `items` (different inputs: a mean, for throughput)."""
    return 1e3 * timed(lambda: [fn(item) for item in items]) / len(items)


def per_image_costs(files: list[Path], img_size: int, seed: int = 0) -> dict[str, float]:
    """Mean milliseconds per image, on one thread, of each step the two loaders run, on the same crops."""
    from PIL import Image
    from torchvision.transforms import v2
    from torchvision.transforms.v2 import functional as TF
    from sgformer.datasets.numba_cache import import_ffcv
    import_ffcv()
    from ffcv.libffcv import imdecode, resize_crop

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    torch.manual_seed(seed)
    blobs = [np.frombuffer(f.read_bytes(), np.uint8) for f in files]
    pixels = [np.array(Image.open(io.BytesIO(blob)).convert('RGB')) for blob in blobs]
    crops = [v2.RandomResizedCrop.get_params(torch.empty(1, *p.shape[:2]), [0.08, 1.0], [3 / 4, 4 / 3]) for p in pixels]
    out = np.empty((img_size, img_size, 3), np.uint8)

    def pil_decode(i):
        Image.open(io.BytesIO(blobs[i])).convert('RGB').load()

    def torchvision_resize(i):
        TF.resized_crop(torch.from_numpy(pixels[i]).permute(2, 0, 1), *crops[i], [img_size, img_size], antialias=True)

    def ffcv_decode(i):
        height, width = pixels[i].shape[:2]
        imdecode(blobs[i], np.empty_like(pixels[i]), height, width, height, width, 0, 0, 1, 1, False, False)

    def ffcv_resize(i):
        top, left, height, width = crops[i]
        resize_crop(pixels[i], top, top + height, left, left + width, out)

    steps = (pil_decode, torchvision_resize, ffcv_decode, ffcv_resize)
    costs = {step.__name__: _mean_ms(step, range(len(files))) for step in steps}
    torch.set_num_threads(threads)
    return costs


def run(args: argparse.Namespace, root: Path) -> dict:
    start = time.perf_counter()
    write_sample(root / 'src', Sample(num_classes=args.classes, train_per_class=args.per_class, val_per_class=2,
                                      min_size=args.min_size, max_size=args.max_size, bad_files=False))
    print(f'wrote {args.classes * args.per_class} images in {time.perf_counter() - start:.1f} s', file=sys.stderr)
    common = dict(train=True, batch_size=args.batch, img_size=args.img_size, loader=Loader(num_workers=args.workers),
                  augment=OFFICIAL)
    loaders, convert = {'folder': create_folder_loader(root / 'src', **common)}, {}
    for mode in args.write_modes:
        out = root / f'betons_{mode}'
        settings = Convert(max_resolution=500, write_mode=mode, num_workers=args.workers, max_bad_fraction=0.0)
        convert[mode] = convert_folder(root / 'src', out, settings, report=root / 'bad.json')
        loaders[mode] = create_ffcv_loader(out / 'train.beton', **common)
    transform = None
    if args.augment:
        batch_transform = TrainTransform(OFFICIAL, num_classes=args.classes, seed=0, device=torch.device('cpu'))
        transform = lambda x, y: batch_transform(x, y, index=0)  # noqa: E731
    speed = time_interleaved(loaders, args.epochs, transform)
    result = dict(folder_img_s=round(speed['folder'], 1), images=args.classes * args.per_class, ffcv={})
    for mode, stats in convert.items():
        result['ffcv'][mode] = dict(img_s=round(speed[mode], 1), ratio=round(speed[mode] / speed['folder'], 2),
                                    convert_write_img_s=stats['train']['images_per_s'],
                                    convert_total_img_s=stats['images_per_s'], beton_bytes=stats['train']['bytes'])
    if args.per_image:
        files = sorted((root / 'src' / 'train').rglob('*.JPEG'))
        costs = per_image_costs(files[::max(1, len(files) // args.per_image)][:args.per_image], args.img_size)
        result['per_image_ms'] = {k: round(v, 3) for k, v in costs.items()}
        result['ffcv_ceiling_img_s'] = {k: round(v, 1) for k, v in ffcv_ceilings(costs, args.workers).items()}
    return result


def ffcv_ceilings(costs: dict[str, float], workers: int) -> dict[str, float]:
    """Images/s of `workers` threads that only decode and resize, per write mode."""
    per_image = {'raw': costs['ffcv_resize'], 'proportion': costs['ffcv_resize'] + costs['ffcv_decode'] / 2,
                 'jpg': costs['ffcv_resize'] + costs['ffcv_decode']}
    return {mode: 1e3 * workers / ms for mode, ms in per_image.items()}


def print_per_image(result: dict, workers: int) -> None:
    costs, folder = result['per_image_ms'], result['folder_img_s']
    steps = {'pil_decode': 'baseline: PIL decode',
             'torchvision_resize': 'baseline: torchvision antialiased resized crop',
             'ffcv_decode': 'FFCV: turbojpeg decode (compressed images only)',
             'ffcv_resize': 'FFCV: resize_crop, OpenCV INTER_AREA (every image)'}
    print('\n' + markdown_table(('one image, one thread', 'ms'), [(what, f'{costs[step]:.3f}')
                                                                  for step, what in steps.items()]))
    print('\n' + markdown_table((f'FFCV ceiling, {workers} threads doing only decode + resize', 'img/s',
                                 'vs ImageFolder measured'),
                                [(f'beton `{mode}`', f'{img_s:.0f}', f'{img_s / folder:.2f}x')
                                 for mode, img_s in ffcv_ceilings(costs, workers).items()]))


def main(argv=None) -> None:
    args = parse_args(argv)
    with tempfile.TemporaryDirectory(prefix='bench_loader.') as tmp:
        result = run(args, Path(tmp))
    setup = (f"{result['images']} train images {args.min_size}-{args.max_size} px q90, crop {args.img_size}, "
             f"batch {args.batch}, {args.workers} workers, {'with' if args.augment else 'without'} augmentation, "
             f"{os.cpu_count()} CPUs")
    print(f'\n{setup}\n')
    rows = [('ImageFolder + DataLoader (JPEG files)', result['folder_img_s'], '1.0x')]
    rows += [(f"FFCV train loader, beton `{mode}` ({r['beton_bytes'] / MIB:.0f} MiB)", r['img_s'], f"{r['ratio']}x")
             for mode, r in result['ffcv'].items()]
    rows += [(f'conversion `{mode}`: beton writing / check + write both splits',
              f"{r['convert_write_img_s']} / {r['convert_total_img_s']}", '') for mode, r in result['ffcv'].items()]
    print(markdown_table(('what', 'img/s', 'vs ImageFolder'), rows))
    if 'per_image_ms' in result:
        print_per_image(result, args.workers)
    write_json_atomic(args.out, dict(result, setup=setup, args={k: str(v) for k, v in vars(args).items()},
                                     python=platform.python_version()))


if __name__ == '__main__':
    main()
