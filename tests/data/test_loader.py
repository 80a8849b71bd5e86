"""Loaders on CPU with 2 workers: batch shape/dtype/range, labels, and 2-rank distributed splitting."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from sgformer.data.beton import class_index, convert_folder, list_images, write_beton
from sgformer.data.loader import create_ffcv_loader, create_folder_loader, create_loader
from sgformer.data.sample import write_sample

REPO = Path(__file__).resolve().parents[2]
CONVERT = dict(max_resolution=128, jpeg_quality=90, compress_probability=0.5, write_mode='proportion', num_workers=2)


@pytest.fixture(scope='module')
def data(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp('loader')
    write_sample(root / 'sample', num_classes=4, train_per_class=20, val_per_class=5, min_size=48, max_size=120)
    convert_folder(root / 'sample', root / 'betons', max_bad_fraction=0.1, report=root / 'bad.json', **CONVERT)
    return root


def labels_of(split_root: Path, exclude=()) -> list[int]:
    return [label for path, label in list_images(split_root, class_index(split_root.parent)) if path not in exclude]


@pytest.mark.timeout(300)
def test_ffcv_loaders_yield_uint8_batches_with_the_right_labels(data):
    train = create_ffcv_loader(data / 'betons' / 'train.beton', train=True, batch_size=16, img_size=64, num_workers=2)
    val = create_ffcv_loader(data / 'betons' / 'val.beton', train=False, batch_size=8, img_size=32, num_workers=2)
    n_train = len(labels_of(data / 'sample' / 'train')) - 2  # truncated + empty are skipped
    seen = []
    for images, labels in train:
        assert images.shape == (16, 3, 64, 64) and images.dtype == torch.uint8
        assert labels.shape == (16,) and labels.dtype == torch.int64
        seen.append(labels.clone())
    assert len(seen) == n_train // 16  # drop_last
    assert 0 <= int(images.min()) and int(images.max()) <= 255 and images.float().std() > 10
    val_labels = torch.cat([labels.clone() for _, labels in val])
    assert val_labels.tolist() == labels_of(data / 'sample' / 'val')  # in order, nothing dropped
    assert len(val) == -(-len(val_labels) // 8)


@pytest.mark.timeout(120)
def test_folder_loader_matches_ffcv_shapes_and_skips_reported_files(data):
    bad = {b['path'] for b in json.loads((data / 'bad.json').read_text())['images']}
    train = create_folder_loader(data / 'sample' / 'train', train=True, batch_size=16, img_size=64, num_workers=2,
                                 exclude=bad)
    batches = [(images, labels.clone()) for images, labels in train]
    assert len(batches) == (len(labels_of(data / 'sample' / 'train')) - len(bad)) // 16
    assert all(images.shape == (16, 3, 64, 64) and images.dtype == torch.uint8 for images, _ in batches)
    val = create_folder_loader(data / 'sample' / 'val', train=False, batch_size=8, img_size=32, num_workers=2)
    assert torch.cat([labels for _, labels in val]).tolist() == labels_of(data / 'sample' / 'val')


def test_create_loader_picks_the_backend(data):
    kwargs = dict(split='val', source=data / 'sample', betons=data / 'betons', batch_size=8, img_size=32,
                  num_workers=0, os_cache=True, batches_ahead=2)
    folder = create_loader('folder', **kwargs)
    assert torch.cat([labels for _, labels in folder]).tolist() == labels_of(data / 'sample' / 'val')
    with pytest.raises(ValueError, match="unknown data backend 'dali'"):
        create_loader('dali', **kwargs)


RANK_SCRIPT = """
import json, sys
import torch.distributed as dist
from sgformer.data.loader import create_ffcv_loader
dist.init_process_group('gloo')
loader = create_ffcv_loader(sys.argv[1], train=True, batch_size=4, img_size=32, num_workers=1, distributed=True)
ids = [int(i) for _, labels in loader for i in labels]
with open(f'{sys.argv[2]}/rank{dist.get_rank()}.json', 'w') as f:
    json.dump(dict(ids=ids, world=dist.get_world_size()), f)
dist.destroy_process_group()
"""


@pytest.mark.slow
@pytest.mark.timeout(400)
def test_distributed_ranks_get_disjoint_samples(data, tmp_path):
    samples = list_images(data / 'sample' / 'val', class_index(data / 'sample'))
    beton = tmp_path / 'ids.beton'  # the label of each sample is its index, so samples can be told apart
    write_beton(beton, [(path, i) for i, (path, _) in enumerate(samples)], max_resolution=64, jpeg_quality=90,
                compress_probability=0.5, write_mode='raw', num_workers=1)
    script = tmp_path / 'rank.py'
    script.write_text(RANK_SCRIPT)
    env = dict(os.environ, PYTHONPATH=str(REPO))
    subprocess.run([sys.executable, '-m', 'torch.distributed.run', '--standalone', '--nproc_per_node=2',
                    str(script), str(beton), str(tmp_path)], cwd=REPO, env=env, check=True, timeout=380)
    ranks = [json.loads((tmp_path / f'rank{r}.json').read_text()) for r in (0, 1)]
    ids = [set(r['ids']) for r in ranks]
    assert all(r['world'] == 2 for r in ranks)
    assert len(ranks[0]['ids']) == len(ids[0]) == len(ranks[1]['ids']) == (len(samples) // 2) // 4 * 4
    assert not ids[0] & ids[1]
    assert ids[0] | ids[1] <= set(range(len(samples)))
