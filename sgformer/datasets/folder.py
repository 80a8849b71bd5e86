"""ImageNet-layout folders (`<root>/{train,val}/<synset>/*.JPEG`): classes and image files, as
torchvision's `ImageFolder` sees them. The convert stage and the folder loader both list images
here, so the two backends read the same files."""
import os
from pathlib import Path

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


def check_source(source: str | Path, *, written_by_make_sample: bool = False) -> None:
    """The checks a stage that reads `data.source` makes first (two directory listings): the folder
    exists, unless the make_sample stage writes it, and train/ and val/ hold the same classes.

    Raises:
        DataError: what is wrong with the folder.
    """
    source = Path(source)
    if not source.is_dir():
        if written_by_make_sample:
            return
        raise DataError(f'folder {source} not found (only sample.out may be missing: make_sample writes it)')
    class_index(source)


def is_image_file(path: str | Path) -> bool:
    return str(path).lower().endswith(IMG_EXTENSIONS)


def list_images(split_root: str | Path, index: dict[str, int]) -> list[tuple[str, int]]:
    """(path, label) of every image file under `split_root`, in ImageFolder order."""
    samples = []
    for name, label in index.items():
        folder = Path(split_root) / name
        files = sorted(f for f in folder.rglob('*') if is_image_file(f) and f.is_file())
        samples.extend((str(f), label) for f in files)
    return samples
