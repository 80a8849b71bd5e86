"""Train and val loaders: FFCV betons (the fast path) or a torchvision ImageFolder (the baseline).

Both yield `(images, labels)`: uint8 `B, 3, H, W` images (values 0-255) and int64 labels `B`, on
the requested device; normalisation and the rest of the recipe run on the device afterwards
(`sgformer.augment.transforms`). Train: random-resized crop (`augment.scale`, `augment.ratio`) +
flip, `drop_last`. Val: centre crop of `crop_pct` of the short side (`eval.crop_pct`, the official
eval transform).
"""
import sys
from pathlib import Path

import torch

from .config import Augment, Data, Eval, Loader
from .datasets.beton import check_beton, check_images
from .datasets.folder import DataError, class_index, list_images
from .datasets.numba_cache import import_ffcv


def _label_pipeline(device: torch.device) -> list:
    from ffcv.fields.basics import IntDecoder
    from ffcv.transforms import Squeeze, ToDevice, ToTensor
    tail = [ToDevice(device, non_blocking=True)] if device.type == 'cuda' else []
    return [IntDecoder(), ToTensor(), Squeeze(1), *tail]


def create_ffcv_loader(path: str | Path, *, train: bool, batch_size: int, img_size: int, loader: Loader = Loader(),
                       augment: Augment = Augment(), crop_pct: float = Eval().crop_pct, distributed: bool = False,
                       device: str | torch.device = 'cpu', seed: int = 0):
    """An FFCV `Loader` over a beton written by `sgformer.datasets.beton`.

    Args:
        path: the `.beton` file.
        train: random crop + flip, RANDOM/QUASI_RANDOM order and drop_last; else centre crop, in order.
        batch_size: images per batch on this rank.
        img_size: side of the square output.
        loader: worker threads, OS page cache, batches prepared ahead.
        augment: the train crop's scale / ratio and the flip probability.
        crop_pct: the val centre crop's side over the resized short side.
        distributed: split every epoch across the torch.distributed ranks (RANDOM order when training).
        device: where batches land; on CUDA the copy is asynchronous.
        seed: the order and crop seed.

    Returns:
        The loader; `len()` is the number of batches per epoch.
    """
    import numba
    import_ffcv()
    from ffcv.fields.rgb_image import CenterCropRGBImageDecoder, RandomResizedCropRGBImageDecoder
    from ffcv.loader import Loader as FFCVLoader
    from ffcv.loader import OrderOption
    from ffcv.transforms import RandomHorizontalFlip, ToDevice, ToTensor, ToTorchImage

    check_beton(path)
    device = torch.device(device)
    if train:
        if tuple(augment.scale) == (1.0, 1.0) and tuple(augment.ratio) == (1.0, 1.0):
            # the random crop turned off: its fallback, the centre square, without the 1-pixel jitter
            # ffcv's unseeded generators add for nearly square images (resumes are then exact)
            crop = CenterCropRGBImageDecoder((img_size, img_size), ratio=1.0)
        else:
            crop = RandomResizedCropRGBImageDecoder((img_size, img_size), scale=tuple(augment.scale),
                                                    ratio=tuple(augment.ratio))
        image = [crop, RandomHorizontalFlip(augment.hflip)]
        order = OrderOption.RANDOM if distributed else OrderOption.QUASI_RANDOM
    else:
        image = [CenterCropRGBImageDecoder((img_size, img_size), ratio=crop_pct)]
        order = OrderOption.SEQUENTIAL
    image += [ToTensor(), *([ToDevice(device, non_blocking=True)] if device.type == 'cuda' else []), ToTorchImage()]
    # numba refuses more threads than the machine has cores (a GPU-node setting on a small machine)
    workers = max(1, min(loader.num_workers, numba.config.NUMBA_NUM_THREADS))
    return FFCVLoader(str(path), batch_size=batch_size, num_workers=workers, order=order,
                      os_cache=loader.os_cache, drop_last=train, distributed=distributed,
                      batches_ahead=loader.batches_ahead, seed=seed,
                      pipelines={'image': image, 'label': _label_pipeline(device)})


class FolderLoader:
    """A DataLoader over an ImageFolder-like dataset whose batches arrive on `device`
    (asynchronously from pinned memory); `num_images` is the dataset size."""

    def __init__(self, loader, device: torch.device):
        self.loader, self.device = loader, device
        self.sampler = loader.sampler

    @property
    def num_images(self) -> int:
        return len(self.loader.dataset)

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self):
        try:
            for images, labels in self.loader:
                yield images.to(self.device, non_blocking=True), labels.to(self.device, non_blocking=True)
        except DataError as e:  # raised in a worker: torch wraps it with the worker's traceback
            raise DataError(str(e).strip().splitlines()[-1].removeprefix(f'{DataError.__module__}.DataError: ')) from None


class _Images(torch.utils.data.Dataset):
    """(path, label) pairs decoded to RGB and transformed; a file that no longer decodes is named."""

    def __init__(self, samples: list[tuple[str, int]], transform):
        self.samples, self.transform = samples, transform

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int):
        from PIL import Image
        path, label = self.samples[i]
        try:
            with Image.open(path) as image:
                image = image.convert('RGB')
        except (OSError, ValueError) as e:
            raise DataError(f'{path}: unreadable image ({e}); run the convert stage, whose report '
                            'lists the files to skip') from None
        return self.transform(image), label


def create_folder_loader(root: str | Path, *, train: bool, batch_size: int, img_size: int, loader: Loader = Loader(),
                         augment: Augment = Augment(), crop_pct: float = Eval().crop_pct, distributed: bool = False,
                         device: str | torch.device = 'cpu', seed: int = 0, exclude: frozenset[str] | None = None):
    """A torchvision-transformed folder dataset + `DataLoader` with the same crops and output as
    `create_ffcv_loader`, over the files `sgformer.datasets.folder` lists (the convert stage's view).

    Args:
        root: an ImageNet-layout folder (`<root>/{train,val}/<synset>/*.JPEG`).
        exclude: paths to leave out: the unreadable files the convert stage's report lists; None
            (no report) decodes every image of the split once first and leaves out, and names,
            the ones that fail, as the convert stage does.
        other args: as in `create_ffcv_loader`.

    Returns:
        An iterable of `(images, labels)` batches with `len()` and `num_images`.
    """
    from torch.utils.data import DataLoader, DistributedSampler
    from torchvision.transforms import v2

    if train:
        crop = [v2.RandomResizedCrop(img_size, scale=tuple(augment.scale), ratio=tuple(augment.ratio), antialias=True),
                v2.RandomHorizontalFlip(augment.hflip)]
    else:
        crop = [v2.Resize(int(img_size / crop_pct), antialias=True), v2.CenterCrop(img_size)]
    root = Path(root)
    samples = list_images(root / ('train' if train else 'val'), class_index(root))
    if exclude is None:
        exclude = _unreadable(samples, loader.num_workers)
    samples = [s for s in samples if s[0] not in exclude]
    dataset = _Images(samples, v2.Compose([v2.PILToTensor(), *crop]))
    sampler = DistributedSampler(dataset, shuffle=train, seed=seed, drop_last=train) if distributed else None
    generator = torch.Generator().manual_seed(seed)
    batches = DataLoader(dataset, batch_size=batch_size, shuffle=train and sampler is None, sampler=sampler,
                         num_workers=loader.num_workers, drop_last=train, generator=generator,
                         pin_memory=torch.device(device).type == 'cuda', persistent_workers=loader.num_workers > 0)
    return FolderLoader(batches, torch.device(device))


def _unreadable(samples: list[tuple[str, int]], workers: int) -> frozenset[str]:
    """Decode every image once (as convert does), report the unreadable ones in one line."""
    bad, _ = check_images([path for path, _ in samples], max(workers, 1))
    if bad:
        names = ', '.join(b['path'] for b in bad[:5]) + (', ...' if len(bad) > 5 else '')
        print(f'folder backend: leaving out {len(bad)} unreadable images ({names})', file=sys.stderr)
    return frozenset(b['path'] for b in bad)


def create_loader(split: str, *, data: Data, loader: Loader, img_size: int, batch_size: int,
                  augment: Augment = Augment(), crop_pct: float = Eval().crop_pct, seed: int = 0,
                  device: str | torch.device = 'cpu', distributed: bool = False, exclude: frozenset[str] | None = None):
    """The `data.backend` loader of one split: `ffcv` reads `<data.betons>/<split>.beton`, `folder`
    reads `<data.source>/<split>` (leaving out `exclude`, or the files that don't decode)."""
    common = dict(train=split == 'train', batch_size=batch_size, img_size=img_size, loader=loader, augment=augment,
                  crop_pct=crop_pct, distributed=distributed, device=device, seed=seed)
    if data.backend == 'ffcv':
        return create_ffcv_loader(Path(data.betons) / f'{split}.beton', **common)
    return create_folder_loader(data.source, exclude=exclude, **common)


class LoaderPerSize:
    """A train loader whose side is chosen per epoch (progressive resizing): `at(img_size)` builds
    the loader of that side (`create(img_size)`) the first time it is asked for and keeps only the
    current one (sides only grow, and each FFCV loader holds its own buffers)."""

    def __init__(self, create):
        self._create, self._size, self._loader = create, None, None

    def at(self, img_size: int):
        if img_size != self._size:
            self._loader = None  # free the previous side's buffers first
            self._loader, self._size = self._create(img_size), img_size
        return self._loader


def loader_size(loader) -> int:
    """Images one pass of a loader of this module yields before `drop_last`."""
    indices = getattr(loader, 'indices', None)  # an ffcv Loader
    return len(indices) if indices is not None else loader.num_images
