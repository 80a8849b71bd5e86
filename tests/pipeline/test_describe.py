"""The `describe` stage reports the size and cost of every variant."""
import json

import pytest

from pipeline.describe import main

PARAMS = """
variants:
  a:
    model: sgformer_nano
    img_size: 64
    num_classes: 10
  b:
    model: sgformer_nano
    img_size: 96
    num_classes: 3
"""


def test_describe_reports_every_variant(tmp_path):
    params = tmp_path / 'params.yaml'
    params.write_text(PARAMS)
    out = tmp_path / 'reports' / 'models.json'
    main(['--params', str(params), '--out', str(out)])
    report = json.loads(out.read_text())
    assert set(report) == {'a', 'b'}
    assert report['a']['num_outputs'] == 10 and report['b']['num_outputs'] == 3
    assert report['b']['gmacs'] > report['a']['gmacs'] > 0  # cost grows with resolution
    assert not list(out.parent.glob('*.tmp'))


def test_describe_bad_params_exits_with_message(tmp_path):
    params = tmp_path / 'params.yaml'
    params.write_text(PARAMS.replace('img_size: 64', 'img_size: 0'))
    with pytest.raises(SystemExit) as exit_info:
        main(['--params', str(params), '--out', str(tmp_path / 'm.json')])
    assert 'variants.a.img_size' in str(exit_info.value.code)


def test_describe_takes_a_null_class_count_from_the_betons(tmp_path):
    betons = tmp_path / 'betons'
    betons.mkdir()
    (betons / 'class_index.json').write_text(json.dumps({f'n{i:08d}': i for i in range(7)}))
    params = tmp_path / 'params.yaml'
    params.write_text(f'data:\n  betons: {betons}\n' + PARAMS.replace('num_classes: 3', 'num_classes: null'))
    out = tmp_path / 'models.json'
    main(['--params', str(params), '--out', str(out)])
    metrics = json.loads(out.read_text())
    assert metrics['a']['num_outputs'] == 10 and metrics['b']['num_outputs'] == 7
