"""Folder -> beton conversion: exact round trip, bad files skipped and reported, atomic outputs."""
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from sgformer.datasets.beton import convert_folder
from sgformer.datasets.folder import DataError, class_index, list_images
from sgformer.config import Convert, Sample
from sgformer.datasets.sample import synset, write_sample

RAW = Convert(max_resolution=256, write_mode='raw', num_workers=2)
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope='module')
def sample(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp('sample')
    write_sample(root, Sample(num_classes=5, train_per_class=4, val_per_class=2, min_size=40, max_size=120))
    return root


def read_beton(path: Path) -> list[tuple[np.ndarray, int]]:
    """(image, label) of every sample of a raw-mode beton, in sample order, straight from its metadata
    and bytes (the page layout may differ between two writes of the same samples)."""
    from ffcv.reader import Reader
    samples = []
    for (mode, width, height, ptr), label in Reader(str(path)).metadata.tolist():
        assert mode == 1  # raw
        pixels = np.fromfile(path, dtype=np.uint8, count=height * width * 3, offset=ptr)
        samples.append((pixels.reshape(height, width, 3), label))
    return samples


def same_samples(a: list, b: list) -> bool:
    return len(a) == len(b) and all(np.array_equal(x, y) and la == lb for (x, la), (y, lb) in zip(a, b))


@pytest.mark.timeout(240)
def test_round_trip_skips_bad_files_and_keeps_pixels(sample, tmp_path):
    report = tmp_path / 'bad.json'
    stats = convert_folder(sample, tmp_path / 'out', RAW.model_copy(update=dict(max_bad_fraction=0.5)), report=report)
    bad = json.loads(report.read_text())
    assert sorted(Path(b['path']).name for b in bad['images']) == [f'{synset(0)}_truncated.JPEG', f'{synset(1)}_empty.JPEG']
    assert bad['count'] == 2 and all(b['reason'] for b in bad['images'])
    index = json.loads((tmp_path / 'out' / 'class_index.json').read_text())
    assert index == {synset(k): k for k in range(5)}
    for split in ('train', 'val'):
        expected = [(p, label) for p, label in list_images(sample / split, index) if 'truncated' not in p and 'empty' not in p]
        stored = read_beton(tmp_path / 'out' / f'{split}.beton')
        assert [label for _, label in stored] == [label for _, label in expected]
        for (image, _), (path, _) in zip(stored, expected):  # raw mode keeps every pixel; CMYK/gray/PNG become RGB
            np.testing.assert_array_equal(image, np.asarray(Image.open(path).convert('RGB')))
        assert stats[split]['images'] == len(expected)
        assert sum(bad['per_class'][split].values()) == len(expected)
    assert stats['train']['skipped'] == 2 and stats['bad_images'] == 2


def test_val_classes_must_match_train(sample, tmp_path):
    root = tmp_path / 'data'
    write_sample(root, Sample(num_classes=3, train_per_class=1, val_per_class=1, bad_files=False))
    (root / 'val' / synset(2)).rename(root / 'val' / 'n99999999')
    with pytest.raises(DataError, match=r"only in train: \['n00000003'\], only in val: \['n99999999'\]"):
        class_index(root)


@pytest.mark.timeout(120)
def test_too_many_bad_images_fails_before_writing(sample, tmp_path):
    report = tmp_path / 'bad.json'
    total = len(list(sample.rglob('*.JPEG')))
    with pytest.raises(DataError, match=f'2 of {total} images are unusable'):
        convert_folder(sample, tmp_path / 'out', RAW.model_copy(update=dict(max_bad_fraction=0.01)), report=report)
    assert json.loads(report.read_text())['count'] == 2
    assert not (tmp_path / 'out').exists() or not list((tmp_path / 'out').iterdir())


@pytest.mark.timeout(400)
def test_kill_9_mid_conversion_leaves_no_final_file_and_a_rerun_converts_the_same(tmp_path, kill_when):
    src = tmp_path / 'src'
    write_sample(src, Sample(num_classes=4, train_per_class=60, val_per_class=20, min_size=200, max_size=300, bad_files=False))
    params = tmp_path / 'params.yaml'
    params.write_text('convert: {write_mode: raw, max_resolution: 256}\nvariants: {a: {model: sgformer_nano}}\n')

    def command(out: Path) -> list[str]:
        return [sys.executable, '-m', 'pipeline.convert', '--params', str(params), '--src', str(src), '--out', str(out),
                '--report', str(tmp_path / 'bad.json')]

    out = tmp_path / 'out'
    kill_when(command(out), lambda: next(out.glob('.train.beton.*.tmp'), None), cwd=REPO, env=dict(os.environ))
    assert not [p.name for p in out.iterdir() if not p.name.startswith('.')]  # no final file appeared
    for target in (out, tmp_path / 'reference'):
        subprocess.run(command(target), cwd=REPO, check=True, capture_output=True, timeout=200)
    for split in ('train', 'val'):
        assert same_samples(read_beton(out / f'{split}.beton'), read_beton(tmp_path / 'reference' / f'{split}.beton'))
    assert not list(out.glob('.*.tmp'))  # the rerun cleared what the killed one left
