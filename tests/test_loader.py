"""Loaders on CPU with 2 workers: batch shape/dtype/range, labels, and 2-rank distributed splitting."""
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from sgformer.datasets.beton import convert_folder, write_beton
from sgformer.datasets.folder import DataError, class_index, list_images
from sgformer.loader import create_ffcv_loader, create_folder_loader, create_loader, loader_size
from sgformer.config import Augment, Convert, Data, Loader, Sample
from sgformer.datasets.sample import write_sample

REPO = Path(__file__).resolve().parents[2]
CONVERT = Convert(max_resolution=128, max_bad_fraction=0.1)
LOADER = Loader(num_workers=2)


@pytest.fixture(scope='module')
def data(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp('loader')
    write_sample(root / 'sample', Sample(num_classes=4, train_per_class=20, val_per_class=5, min_size=48, max_size=120))
    convert_folder(root / 'sample', root / 'betons', CONVERT, report=root / 'bad.json')
    return root


def labels_of(split_root: Path, exclude=()) -> list[int]:
    return [label for path, label in list_images(split_root, class_index(split_root.parent)) if path not in exclude]


@pytest.mark.timeout(300)
def test_ffcv_loaders_yield_uint8_batches_with_the_right_labels(data):
    train = create_ffcv_loader(data / 'betons' / 'train.beton', train=True, batch_size=16, img_size=64, loader=LOADER)
    val = create_ffcv_loader(data / 'betons' / 'val.beton', train=False, batch_size=8, img_size=32, loader=LOADER)
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
    train = create_folder_loader(data / 'sample', train=True, batch_size=16, img_size=64, loader=LOADER, exclude=bad)
    batches = [(images, labels.clone()) for images, labels in train]
    assert len(batches) == (len(labels_of(data / 'sample' / 'train')) - len(bad)) // 16
    assert all(images.shape == (16, 3, 64, 64) and images.dtype == torch.uint8 for images, _ in batches)
    val = create_folder_loader(data / 'sample', train=False, batch_size=8, img_size=32, loader=LOADER)
    assert torch.cat([labels for _, labels in val]).tolist() == labels_of(data / 'sample' / 'val')
    assert val.num_images == loader_size(val) == len(labels_of(data / 'sample' / 'val'))


@pytest.mark.timeout(120)
def test_folder_loader_names_an_unreadable_file_it_was_not_told_about(data):
    train = create_folder_loader(data / 'sample', train=True, batch_size=4, img_size=32, loader=Loader(num_workers=1),
                                 exclude=frozenset())
    with pytest.raises(DataError) as error:
        for _ in train:
            pass
    message = str(error.value)
    assert re.fullmatch(r'.*_(truncated|empty)\.JPEG: unreadable image .*convert stage.*', message)
    assert '\n' not in message and 'Traceback' not in message  # one line, not the worker's traceback


@pytest.mark.timeout(120)
def test_folder_loader_without_a_report_checks_and_names_what_it_leaves_out(data, capsys):
    train = create_folder_loader(data / 'sample', train=True, batch_size=4, img_size=32, loader=Loader(num_workers=1))
    assert sum(len(labels) for _, labels in train) == (len(labels_of(data / 'sample' / 'train')) - 2) // 4 * 4
    assert 'leaving out 2 unreadable images' in capsys.readouterr().err


@pytest.mark.timeout(120)
def test_create_loader_picks_the_backend(data):
    kwargs = dict(loader=Loader(num_workers=0), augment=Augment(), batch_size=8, img_size=32)
    folder = create_loader('val', data=Data(source=str(data / 'sample'), betons='-', backend='folder'), **kwargs)
    assert torch.cat([labels for _, labels in folder]).tolist() == labels_of(data / 'sample' / 'val')
    ffcv = create_loader('val', data=Data(source='-', betons=str(data / 'betons')), **kwargs)
    assert loader_size(ffcv) == len(labels_of(data / 'sample' / 'val'))


RANK_SCRIPT = """
import json, sys
import torch.distributed as dist
from sgformer.config import Loader
from sgformer.loader import create_ffcv_loader
dist.init_process_group('gloo')
loader = create_ffcv_loader(sys.argv[1], train=True, batch_size=4, img_size=32, loader=Loader(num_workers=1),
                            distributed=True)
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
    write_beton(beton, [(path, i) for i, (path, _) in enumerate(samples)],
                Convert(max_resolution=64, write_mode='raw', num_workers=1))
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
