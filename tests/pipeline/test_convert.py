"""The `convert` stage: params in, betons, class index and report out; clear errors."""
import json

import pytest

from pipeline.convert import main
from sgformer.config import Sample
from sgformer.datasets.sample import synset, write_sample

PARAMS = """
data: {{source: {src}, betons: {out}}}
convert: {{max_resolution: 96, write_mode: jpg, max_bad_fraction: {max_bad}}}
variants:
  a: {{model: sgformer_nano}}
"""


def run(tmp_path, max_bad=0.2):
    params = tmp_path / 'params.yaml'
    params.write_text(PARAMS.format(src=tmp_path / 'src', out=tmp_path / 'betons', max_bad=max_bad))
    main(['--params', str(params), '--report', str(tmp_path / 'bad.json')])


@pytest.mark.timeout(120)
def test_convert_writes_every_output(tmp_path):
    write_sample(tmp_path / 'src', Sample(num_classes=3, train_per_class=6, val_per_class=2))
    run(tmp_path)
    names = sorted(p.name for p in (tmp_path / 'betons').iterdir())
    assert names == ['class_index.json', 'train.beton', 'val.beton']
    readable = {d.name: len([f for f in d.iterdir() if not f.stem.endswith(('truncated', 'empty'))])
                for d in sorted((tmp_path / 'src' / 'train').iterdir())}
    report = json.loads((tmp_path / 'bad.json').read_text())
    assert report['per_class']['train'] == readable and set(readable) == {synset(k) for k in range(3)}
    stats = report['conversion']
    assert stats['val']['images'] == 7 and stats['images_per_s'] > 0 and stats['train']['bytes'] > 0
    assert report['count'] == 2


def test_convert_missing_split_exits_with_message(tmp_path):
    write_sample(tmp_path / 'src', Sample(num_classes=2, train_per_class=1, val_per_class=1, bad_files=False))
    for f in (tmp_path / 'src' / 'val').rglob('*'):
        f.unlink() if f.is_file() else None
    for d in (tmp_path / 'src' / 'val').iterdir():
        d.rmdir()
    with pytest.raises(SystemExit) as exit_info:
        run(tmp_path)
    assert 'no class folders' in str(exit_info.value.code) and 'val' in str(exit_info.value.code)
    assert not (tmp_path / 'betons').exists()
