"""Train and val loaders: FFCV betons (the fast path) or a torchvision ImageFolder (the baseline).

Both yield `(images, labels)`: uint8 `B, 3, H, W` images (values 0-255) and int64 labels `B`, on
the requested device; normalisation and the rest of the recipe run on the device afterwards
(`sgformer.data.transforms`). Train: random-resized crop (scale 0.08-1, ratio 3/4-4/3) + flip,
`drop_last`. Val: centre crop of `crop_pct` of the short side (the official eval transform).
"""
from pathlib import Path

import torch


def _label_pipeline(device: torch.device) -> list:
    from ffcv.fields.basics import IntDecoder
    from ffcv.transforms import Squeeze, ToDevice, ToTensor
    tail = [ToDevice(device, non_blocking=True)] if device.type == 'cuda' else []
    return [IntDecoder(), ToTensor(), Squeeze(1), *tail]


def create_ffcv_loader(path: str | Path, *, train: bool, batch_size: int, img_size: int, num_workers: int,
                       os_cache: bool = True, batches_ahead: int = 2, distributed: bool = False,
                       device: str | torch.device = 'cpu', scale: tuple[float, float] = (0.08, 1.0),
                       ratio: tuple[float, float] = (3 / 4, 4 / 3), hflip: float = 0.5, crop_pct: float = 0.9,
                       seed: int = 0):
    """An FFCV `Loader` over a beton written by `sgformer.data.beton`.

    Args:
        path: the `.beton` file.
        train: random crop + flip, RANDOM/QUASI_RANDOM order and drop_last; else centre crop, in order.
        batch_size: images per batch on this rank.
        img_size: side of the square output.
        num_workers: decoding threads.
        os_cache: leave caching to the OS page cache (the whole file is read once).
        batches_ahead: batches prepared ahead.
        distributed: split every epoch across the torch.distributed ranks (RANDOM order when training).
        device: where batches land; on CUDA the copy is asynchronous.
        scale: random-resized-crop area range.
        ratio: random-resized-crop aspect-ratio range.
        hflip: flip probability.
        crop_pct: val centre crop as a share of the short side.
        seed: the order and crop seed.

    Returns:
        The loader; `len()` is the number of batches per epoch.
    """
    from ffcv.fields.rgb_image import CenterCropRGBImageDecoder, RandomResizedCropRGBImageDecoder
    from ffcv.loader import Loader, OrderOption
    from ffcv.transforms import RandomHorizontalFlip, ToDevice, ToTensor, ToTorchImage

    device = torch.device(device)
    if train:
        image = [RandomResizedCropRGBImageDecoder((img_size, img_size), scale=tuple(scale), ratio=tuple(ratio)),
                 RandomHorizontalFlip(hflip)]
        order = OrderOption.RANDOM if distributed else OrderOption.QUASI_RANDOM
    else:
        image = [CenterCropRGBImageDecoder((img_size, img_size), ratio=crop_pct)]
        order = OrderOption.SEQUENTIAL
    image += [ToTensor(), *([ToDevice(device, non_blocking=True)] if device.type == 'cuda' else []), ToTorchImage()]
    return Loader(str(path), batch_size=batch_size, num_workers=num_workers, order=order, os_cache=os_cache,
                  drop_last=train, distributed=distributed, batches_ahead=batches_ahead, seed=seed,
                  pipelines={'image': image, 'label': _label_pipeline(device)})


class _ToDevice:
    """Wraps a DataLoader so that batches arrive on `device` (asynchronously from pinned memory)."""

    def __init__(self, loader, device: torch.device):
        self.loader, self.device = loader, device

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self):
        for images, labels in self.loader:
            yield images.to(self.device, non_blocking=True), labels.to(self.device, non_blocking=True)


def create_folder_loader(root: str | Path, *, train: bool, batch_size: int, img_size: int, num_workers: int,
                         distributed: bool = False, device: str | torch.device = 'cpu',
                         scale: tuple[float, float] = (0.08, 1.0), ratio: tuple[float, float] = (3 / 4, 4 / 3),
                         hflip: float = 0.5, crop_pct: float = 0.9, seed: int = 0, exclude: set[str] = frozenset()):
    """A torchvision `ImageFolder` + `DataLoader` with the same crops and output as `create_ffcv_loader`.

    Args:
        root: one split of an ImageNet-layout folder (`<root>/<synset>/*.JPEG`).
        exclude: paths to leave out (the unreadable files listed by the convert stage's report).
        other args: as in `create_ffcv_loader`.

    Returns:
        An iterable of `(images, labels)` batches with `len()`.
    """
    from torch.utils.data import DataLoader, DistributedSampler
    from torchvision import datasets
    from torchvision.transforms import v2

    if train:
        crop = [v2.RandomResizedCrop(img_size, scale=tuple(scale), ratio=tuple(ratio), antialias=True),
                v2.RandomHorizontalFlip(hflip)]
    else:
        crop = [v2.Resize(int(img_size / crop_pct), antialias=True), v2.CenterCrop(img_size)]
    transform = v2.Compose([v2.PILToTensor(), *crop])
    dataset = datasets.ImageFolder(str(root), transform=transform, loader=_rgb_loader,
                                   is_valid_file=lambda p: p not in exclude and p.lower().endswith(datasets.folder.IMG_EXTENSIONS))
    sampler = DistributedSampler(dataset, shuffle=train, seed=seed, drop_last=train) if distributed else None
    generator = torch.Generator().manual_seed(seed)
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=train and sampler is None, sampler=sampler,
                        num_workers=num_workers, drop_last=train, generator=generator,
                        pin_memory=torch.device(device).type == 'cuda', persistent_workers=num_workers > 0)
    return _ToDevice(loader, torch.device(device))


def _rgb_loader(path: str):
    from PIL import Image
    with Image.open(path) as image:
        return image.convert('RGB')


def create_loader(backend: str, *, split: str, source: str | Path, betons: str | Path,
                  exclude: set[str] = frozenset(), **kwargs):
    """The `data.backend` loader of one split: `ffcv` reads `<betons>/<split>.beton`, `folder` reads
    `<source>/<split>`; `kwargs` go to `create_ffcv_loader` / `create_folder_loader`."""
    train = split == 'train'
    if backend == 'ffcv':
        return create_ffcv_loader(Path(betons) / f'{split}.beton', train=train, **kwargs)
    if backend == 'folder':
        for key in ('os_cache', 'batches_ahead'):
            kwargs.pop(key, None)
        return create_folder_loader(Path(source) / split, train=train, exclude=exclude, **kwargs)
    raise ValueError(f"unknown data backend {backend!r} (ffcv | folder)")
