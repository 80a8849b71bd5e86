"""ImageNet-layout folder -> FFCV betons (`train.beton`, `val.beton`) plus the class index.

Every image is decoded once up front in worker processes; unreadable ones are skipped and
reported, grayscale/CMYK/palette images are converted to RGB. Outputs appear atomically: each
file is written under a temporary name in its folder and renamed when complete.
"""
import json
import os
import time
from collections import Counter
from contextlib import ExitStack
from multiprocessing import Pool
from pathlib import Path

from PIL import Image
from tqdm import tqdm

from ..config import Convert
from ..io import atomic_path, write_json_atomic
from .folder import SPLITS, DataError, class_index, list_images
from .numba_cache import import_ffcv

__all__ = ['DataError', 'check_image', 'check_images', 'write_beton', 'convert_folder', 'skipped_images', 'check_beton']


def check_image(path: str) -> tuple[str | None, tuple[int, int]]:
    """Decode one image fully: (the reason it is unusable or None, its (width, height))."""
    try:
        with Image.open(path) as image:
            image.convert('RGB').load()
            return None, image.size
    except Exception as e:  # PIL raises many types for broken files
        return f'{type(e).__name__}: {e}'.strip(), (0, 0)


def check_images(paths: list[str], workers: int) -> tuple[list[dict], list[tuple[int, int]]]:
    """Decode `paths` in `workers` processes: one {'path', 'reason'} per unusable file, and the
    (width, height) of every file ((0, 0) for the unusable ones)."""
    with Pool(workers) as pool:
        results = list(tqdm(pool.imap(check_image, paths, chunksize=32), total=len(paths),
                            desc='checking', unit='img', mininterval=1))
    bad = [dict(path=p, reason=reason) for p, (reason, _) in zip(paths, results) if reason is not None]
    return bad, [size for _, size in results]


def estimate_beton_bytes(sizes: list[tuple[int, int]], file_bytes: list[int], convert: Convert) -> int:
    """A generous estimate of the beton holding these images: raw pixels (at most max_resolution
    on the long side) for the share stored raw, 1.5x the source file's share of them for JPEGs,
    plus a page per worker."""
    total = 0
    jpeg_share = {'raw': 0.0, 'jpg': 1.0, 'smart': 1.0, 'proportion': convert.compress_probability}[convert.write_mode]
    for (width, height), stored in zip(sizes, file_bytes):
        scale = min(1.0, convert.max_resolution / max(width, height, 1))
        raw = int(width * scale) * int(height * scale) * 3
        total += int((1 - jpeg_share) * raw + jpeg_share * min(raw, 1.5 * stored * scale * scale + 1024))
    return total + (convert.num_workers + 1) * _page_size(convert.max_resolution)


def _page_size(max_resolution: int) -> int:
    return 1 << max(21, (4 * max_resolution ** 2).bit_length())  # a page must hold one raw image


def check_space(folder: Path, files: list[int]) -> None:
    """Refuse to start writing files of these sizes that the disk or the file size limit cannot take.

    Raises:
        OSError: ENOSPC or EFBIG, with the folder as its file name.
    """
    import errno
    import resource
    import shutil
    folder.mkdir(parents=True, exist_ok=True)
    free = shutil.disk_usage(folder).free
    limit = resource.getrlimit(resource.RLIMIT_FSIZE)[0]
    needed, largest = sum(files), max(files)
    if needed > free:
        raise OSError(errno.ENOSPC, f'convert needs about {needed / 2**20:.0f} MiB, {free / 2**20:.0f} MiB are free',
                      str(folder))
    if limit != resource.RLIM_INFINITY and largest > limit:
        raise OSError(errno.EFBIG, f'a beton of about {largest / 2**20:.0f} MiB is over the file size limit '
                      f'({limit / 2**20:.1f} MiB)', str(folder))


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


def write_beton(path: str | Path, samples: list[tuple[str, int]], convert: Convert) -> None:
    """Write `samples` (already checked) to an FFCV beton with `image` and `label` fields."""
    import_ffcv()
    from ffcv.fields import IntField, RGBImageField
    from ffcv.writer import DatasetWriter

    fields = dict(image=RGBImageField(write_mode=convert.write_mode, max_resolution=convert.max_resolution,
                                      jpeg_quality=convert.jpeg_quality,
                                      compress_probability=convert.compress_probability),
                  label=IntField())
    writer = DatasetWriter(str(path), fields, page_size=_page_size(convert.max_resolution),
                           num_workers=convert.num_workers)
    writer.from_indexed_dataset(FolderSamples(samples),
                                chunksize=max(1, min(100, len(samples) // convert.num_workers)))


def _split_stats(samples: list[tuple[str, int]], found: int, seconds: float, size: int) -> dict:
    return dict(images=len(samples), skipped=found - len(samples), images_per_s=round(len(samples) / seconds, 1),
                bytes=size)


def convert_folder(src: str | Path, out: str | Path, convert: Convert, *, report: str | Path) -> dict:
    """Convert `src/{train,val}` to `out/{train,val}.beton` and `out/class_index.json`.

    Args:
        src: ImageNet-layout folder.
        out: destination folder.
        convert: the `convert` settings.
        report: JSON file listing every skipped image (path, reason) and the images per class,
            written even on failure; a complete conversion adds its statistics (`conversion`).

    Returns:
        The conversion's statistics: images, bytes and images/s per split, and overall.

    Raises:
        DataError: bad layout, class mismatch, or too many unusable images.
    """
    src, out = Path(src), Path(out)
    index = class_index(src)
    stats, bad, found, needed, start = {}, [], {}, {}, time.perf_counter()
    for split in SPLITS:
        found[split] = list_images(src / split, index)
        if not found[split]:
            raise DataError(f'{src / split}: no image files')
        paths = [p for p, _ in found[split]]
        split_bad, sizes = check_images(paths, convert.num_workers)
        bad += split_bad
        needed[split] = estimate_beton_bytes(sizes, [os.path.getsize(p) for p in paths], convert)
    total = sum(len(v) for v in found.values())
    fraction = len(bad) / total
    skip = {b['path'] for b in bad}
    kept = {split: [s for s in found[split] if s[0] not in skip] for split in SPLITS}
    skipped = dict(count=len(bad), total=total, fraction=round(fraction, 6),
                   max_bad_fraction=convert.max_bad_fraction, images=bad,
                   per_class={split: _per_class(kept[split], index) for split in SPLITS})
    write_json_atomic(report, skipped)
    if fraction > convert.max_bad_fraction:
        raise DataError(f'{len(bad)} of {total} images are unusable ({fraction:.2%} > convert.max_bad_fraction '
                        f'{convert.max_bad_fraction:.2%}); see {report}')
    check_space(out, list(needed.values()))
    with ExitStack() as stack:  # every output keeps a temporary name until all are complete
        tmp = {name: stack.enter_context(atomic_path(out / name)) for name in ('train.beton', 'val.beton')}
        for split in SPLITS:
            split_start = time.perf_counter()
            write_beton(tmp[f'{split}.beton'], kept[split], convert)
            stats[split] = _split_stats(kept[split], len(found[split]), time.perf_counter() - split_start,
                                        tmp[f'{split}.beton'].stat().st_size)
        write_json_atomic(out / 'class_index.json', index)
    seconds = time.perf_counter() - start
    stats = dict(stats, num_classes=len(index), bad_images=len(bad), seconds=round(seconds, 2),
                 images_per_s=round((total - len(bad)) / seconds, 1))
    write_json_atomic(report, dict(skipped, conversion=stats))
    return stats


def _per_class(samples: list[tuple[str, int]], index: dict[str, int]) -> dict[str, int]:
    counts = Counter(label for _, label in samples)
    return {name: counts[k] for name, k in index.items()}


def skipped_images(report: str | Path) -> frozenset[str] | None:
    """The unreadable files a `convert_folder` report lists (the folder loaders leave them out);
    None when there is no report."""
    report = Path(report)
    if not report.is_file():
        return None
    return frozenset(image['path'] for image in json.loads(report.read_text())['images'])


def check_beton(path: str | Path) -> None:
    """Refuse a beton that is truncated, empty or not written by ffcv, before a loader reads it
    (ffcv's own reader would fail deep inside a worker thread, or hang).

    Raises:
        DataError: naming the file, what is wrong and the fix.
    """
    import numpy as np
    import_ffcv()
    from ffcv.types import ALLOC_TABLE_TYPE, CURRENT_VERSION, HeaderType

    path = Path(path)
    problem = _beton_problem(path, np, HeaderType, ALLOC_TABLE_TYPE, CURRENT_VERSION)
    if problem:
        raise DataError(f'{path}: {problem}; rerun the convert stage (dvc repro convert)')


def _beton_problem(path: Path, np, header_type, alloc_type, version: int) -> str | None:
    if not path.is_file():
        return 'no such beton'
    size = path.stat().st_size
    if size < header_type.itemsize:
        return f'not an FFCV beton ({size} bytes)'
    header = np.fromfile(path, dtype=header_type, count=1)[0]
    if header['version'] != version:
        return f"not an FFCV beton (format field {header['version']}; ffcv writes {version})"
    table_bytes = size - int(header['alloc_table_ptr'])
    if table_bytes < 0 or table_bytes % alloc_type.itemsize:
        return 'truncated (its allocation table is cut off)'
    table = np.fromfile(path, dtype=alloc_type, offset=int(header['alloc_table_ptr']))
    if len(table) and int((table['ptr'] + table['size']).max()) > int(header['alloc_table_ptr']):
        return 'truncated (samples point past the data)'
    if len(np.unique(table['sample_id'])) != int(header['num_samples']):
        return f"incomplete ({len(np.unique(table['sample_id']))} of {int(header['num_samples'])} samples stored)"
    return None
