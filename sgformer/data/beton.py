"""ImageNet-layout folder -> FFCV betons (`train.beton`, `val.beton`) plus the class index.

Every image is decoded once up front in worker processes; unreadable ones are skipped and
reported, grayscale/CMYK/palette images are converted to RGB. Outputs appear atomically: each
file is written under a temporary name in its folder and renamed when complete.
"""
import os
import tempfile
import time
from collections import Counter
from contextlib import ExitStack, contextmanager
from multiprocessing import Pool
from pathlib import Path

from PIL import Image
from tqdm import tqdm

from sgformer.io import write_json_atomic

IMG_EXTENSIONS = ('.jpg', '.jpeg', '.png', '.ppm', '.bmp', '.pgm', '.tif', '.tiff', '.webp')
SPLITS = ('train', 'val')


class DataError(ValueError):
    """A problem with the input images, already phrased for the user."""


def find_classes(root: str | Path) -> list[str]:
    """Class folder names of `root`, sorted as torchvision `ImageFolder` sorts them."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(f'{root}: folder not found')
    classes = sorted(entry.name for entry in os.scandir(root) if entry.is_dir())
    if not classes:
        raise DataError(f'{root}: no class folders (expected <root>/<synset>/*.JPEG)')
    return classes


def class_index(root: str | Path) -> dict[str, int]:
    """synset -> label from `root/train`; `root/val` must hold the same classes.

    Raises:
        DataError: a split is missing, or val and train classes differ (the difference is named).
    """
    root = Path(root)
    train, val = find_classes(root / 'train'), find_classes(root / 'val')
    if train != val:
        only_train, only_val = sorted(set(train) - set(val)), sorted(set(val) - set(train))
        raise DataError(f'{root}: val classes differ from train classes; only in train: {only_train[:10]}, '
                        f'only in val: {only_val[:10]}')
    return {name: i for i, name in enumerate(train)}


def list_images(split_root: str | Path, index: dict[str, int]) -> list[tuple[str, int]]:
    """(path, label) of every image file under `split_root`, in ImageFolder order."""
    samples = []
    for name, label in index.items():
        folder = Path(split_root) / name
        files = sorted(f for f in folder.rglob('*') if f.suffix.lower() in IMG_EXTENSIONS and f.is_file())
        samples.extend((str(f), label) for f in files)
    return samples


def check_image(path: str) -> str | None:
    """Decode one image fully; the reason it is unusable, or None if it is fine."""
    try:
        with Image.open(path) as image:
            image.convert('RGB').load()
    except Exception as e:  # PIL raises many types for broken files
        return f'{type(e).__name__}: {e}'.strip()
    return None


def find_bad_images(paths: list[str], workers: int) -> list[dict]:
    """Decode `paths` in `workers` processes; one {'path', 'reason'} per unusable file."""
    with Pool(workers) as pool:
        reasons = list(tqdm(pool.imap(check_image, paths, chunksize=32), total=len(paths),
                            desc='checking', unit='img', mininterval=1))
    return [dict(path=p, reason=r) for p, r in zip(paths, reasons) if r is not None]


class FolderSamples:
    """Indexable (RGB PIL image, label) pairs, the input of ffcv's `DatasetWriter`."""

    def __init__(self, samples: list[tuple[str, int]]):
        self.samples = samples

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int) -> tuple[Image.Image, int]:
        path, label = self.samples[i]
        with Image.open(path) as image:
            return image.convert('RGB'), label


@contextmanager
def atomic_path(path: str | Path):
    """Yield a temporary path beside `path`; rename it to `path` only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f'.{path.name}.', suffix='.tmp')
    os.close(fd)
    try:
        yield tmp
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    finally:
        Path(tmp).unlink(missing_ok=True)


def write_beton(path: str | Path, samples: list[tuple[str, int]], *, max_resolution: int, jpeg_quality: int,
                compress_probability: float, write_mode: str, num_workers: int) -> None:
    """Write `samples` (already checked) to an FFCV beton with `image` and `label` fields."""
    from ffcv.fields import IntField, RGBImageField
    from ffcv.writer import DatasetWriter

    fields = dict(image=RGBImageField(write_mode=write_mode, max_resolution=max_resolution,
                                      jpeg_quality=jpeg_quality, compress_probability=compress_probability),
                  label=IntField())
    page_size = 1 << max(21, (4 * max_resolution ** 2).bit_length())  # a page must hold one raw image
    writer = DatasetWriter(str(path), fields, page_size=page_size, num_workers=num_workers)
    writer.from_indexed_dataset(FolderSamples(samples), chunksize=max(1, min(100, len(samples) // num_workers)))


def _split_stats(samples: list[tuple[str, int]], found: int, seconds: float, size: int, names: list[str]) -> dict:
    counts = Counter(label for _, label in samples)
    return dict(images=len(samples), skipped=found - len(samples), images_per_s=round(len(samples) / seconds, 1),
                bytes=size, per_class={name: counts[k] for k, name in enumerate(names)})


def convert_folder(src: str | Path, out: str | Path, *, max_resolution: int, jpeg_quality: int,
                   compress_probability: float, write_mode: str, num_workers: int,
                   max_bad_fraction: float, report: str | Path) -> dict:
    """Convert `src/{train,val}` to `out/{train,val}.beton` and `out/class_index.json`.

    Args:
        src: ImageNet-layout folder.
        out: destination folder.
        max_resolution: longest side stored.
        jpeg_quality: quality of stored JPEGs.
        compress_probability: share stored as JPEG in `proportion` mode.
        write_mode: ffcv `RGBImageField` write mode.
        num_workers: processes for checking and writing.
        max_bad_fraction: fail when more than this share of the images is unusable.
        report: JSON file listing every skipped image (path, reason); written even on failure.

    Returns:
        Statistics for the DVC metrics file: images/s, bytes and per-class counts per split.

    Raises:
        DataError: bad layout, class mismatch, or too many unusable images.
    """
    src, out = Path(src), Path(out)
    index = class_index(src)
    names = list(index)
    stats, bad, found, start = {}, [], {}, time.perf_counter()
    for split in SPLITS:
        found[split] = list_images(src / split, index)
        if not found[split]:
            raise DataError(f'{src / split}: no image files')
        bad += find_bad_images([p for p, _ in found[split]], num_workers)
    total = sum(len(v) for v in found.values())
    fraction = len(bad) / total
    write_json_atomic(report, dict(count=len(bad), total=total, fraction=round(fraction, 6),
                                   max_bad_fraction=max_bad_fraction, images=bad))
    if fraction > max_bad_fraction:
        raise DataError(f'{len(bad)} of {total} images are unusable ({fraction:.2%} > convert.max_bad_fraction '
                        f'{max_bad_fraction:.2%}); see {report}')
    skip = {b['path'] for b in bad}
    with ExitStack() as stack:  # every output keeps a temporary name until all are complete
        tmp = {name: stack.enter_context(atomic_path(out / name)) for name in ('train.beton', 'val.beton')}
        for split in SPLITS:
            samples = [s for s in found[split] if s[0] not in skip]
            split_start = time.perf_counter()
            write_beton(tmp[f'{split}.beton'], samples, max_resolution=max_resolution, jpeg_quality=jpeg_quality,
                        compress_probability=compress_probability, write_mode=write_mode, num_workers=num_workers)
            stats[split] = _split_stats(samples, len(found[split]), time.perf_counter() - split_start,
                                        Path(tmp[f'{split}.beton']).stat().st_size, names)
        write_json_atomic(out / 'class_index.json', index)
    seconds = time.perf_counter() - start
    return dict(stats, num_classes=len(names), bad_images=len(bad), seconds=round(seconds, 2),
                images_per_s=round((total - len(bad)) / seconds, 1))
