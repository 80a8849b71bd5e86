"""The `make_sample` stage writes the sample described by params.yaml."""
import pytest

from pipeline.make_sample import main

PARAMS = """
sample: {{out: {out}, num_classes: 3, train_per_class: 5, val_per_class: 2, bad_files: {bad}}}
data: {{source: {out}}}
variants:
  a: {{model: sgformer_nano}}
"""


def test_make_sample_follows_params(tmp_path):
    params = tmp_path / 'params.yaml'
    params.write_text(PARAMS.format(out=tmp_path / 'sample', bad='false'))
    main(['--params', str(params)])
    files = sorted((tmp_path / 'sample').rglob('*.JPEG'))
    assert len(files) == 3 * (5 + 2)
    assert {f.parent.name for f in files} == {'n00000001', 'n00000002', 'n00000003'}


def test_make_sample_bad_params_exits_with_message(tmp_path):
    params = tmp_path / 'params.yaml'
    params.write_text(PARAMS.format(out=tmp_path / 'sample', bad='maybe'))
    with pytest.raises(SystemExit) as exit_info:
        main(['--params', str(params)])
    assert 'sample.bad_files' in str(exit_info.value.code)
    assert not (tmp_path / 'sample').exists()
