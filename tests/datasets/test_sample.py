"""The sample generator: deterministic bytes, ImageNet layout, odd files, not solvable by colour."""
import hashlib
from pathlib import Path

import numpy as np
from PIL import Image

from sgformer.config import Sample
from sgformer.datasets.sample import CLASSES, synset, write_sample


def digests(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob('*')) if p.is_file()}


def test_same_seed_same_bytes_other_seed_other_bytes(tmp_path):
    kw = dict(num_classes=3, train_per_class=4, val_per_class=2)
    write_sample(tmp_path / 'a', Sample(seed=1, **kw))
    write_sample(tmp_path / 'b', Sample(seed=1, **kw))
    write_sample(tmp_path / 'c', Sample(seed=2, **kw))
    a, b, c = (digests(tmp_path / n) for n in 'abc')
    assert a == b
    assert len(a) == 3 * (4 + 2) + 5
    assert set(a) == set(c) and all(a[k] != c[k] for k in a if not k.endswith('_empty.JPEG'))


def test_layout_sizes_and_odd_files(tmp_path):
    result = write_sample(tmp_path, Sample(num_classes=5, train_per_class=6, val_per_class=2, min_size=40, max_size=90))
    assert sorted(p.name for p in (tmp_path / 'train').iterdir()) == [synset(k) for k in range(5)]
    assert sorted(p.name for p in (tmp_path / 'val').iterdir()) == [synset(k) for k in range(5)]
    sizes = [Image.open(p).size for p in (tmp_path / 'train' / synset(0)).glob('*_0000*.JPEG')]
    assert all(40 <= s <= 90 for size in sizes for s in size) and len(set(sizes)) > 1
    odd = {Path(p).stem.split('_')[1]: tmp_path / p for p in result['odd_files']}
    assert odd['empty'].stat().st_size == 0
    assert Image.open(odd['png']).format == 'PNG'
    assert Image.open(odd['cmyk']).mode == 'CMYK'
    assert Image.open(odd['gray']).mode == 'L'
    try:
        Image.open(odd['truncated']).load()
        truncated_loads = True
    except OSError:
        truncated_loads = False
    assert not truncated_loads
    assert not list(tmp_path.parent.glob('.*.tmp'))


def mean_colours(root: Path, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    x, y = [], []
    for label in range(num_classes):
        for p in sorted((root / synset(label)).glob('*_0*.JPEG')):
            x.append(np.asarray(Image.open(p).convert('RGB'), dtype=np.float64).mean(axis=(0, 1)))
            y.append(label)
    return np.array(x), np.array(y)


def test_mean_colour_does_not_tell_the_class(tmp_path):
    n = len(CLASSES)
    write_sample(tmp_path, Sample(num_classes=n, train_per_class=30, val_per_class=15, bad_files=False))
    x, y = mean_colours(tmp_path / 'train', n)
    xv, yv = mean_colours(tmp_path / 'val', n)
    # least-squares linear probe on [mean colour, 1] -> one-hot class
    features = np.c_[x, np.ones(len(x))]
    weights = np.linalg.lstsq(features, np.eye(n)[y], rcond=None)[0]
    accuracy = (np.argmax(np.c_[xv, np.ones(len(xv))] @ weights, 1) == yv).mean()
    assert accuracy < 0.3  # chance is 0.1
