"""params.yaml schema: good files load, bad ones name the file, the dotted key and the reason."""
from pathlib import Path

import pytest

from sgformer.config import ConfigError, load_params, main

GOOD = """
variants:
  nano:
    model: sgformer_nano
    img_size: 64
    num_classes: 10
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / 'params.yaml'
    path.write_text(text)
    return path


def test_good_file_loads_with_defaults(tmp_path):
    params = load_params(write(tmp_path, GOOD))
    nano = params.variants['nano']
    assert nano.model_kwargs() == dict(img_size=64, num_classes=10, drop_path_rate=0.1)


def test_repo_params_file_is_valid():
    load_params(Path(__file__).resolve().parents[1] / 'params.yaml')


@pytest.mark.parametrize('text, key, reason', [
    (GOOD.replace('img_size: 64', 'img_sise: 64'), 'variants.nano.img_sise', 'Extra inputs are not permitted'),
    (GOOD.replace('img_size: 64', 'img_size: 70'), 'variants.nano.img_size', 'multiple of 32'),
    (GOOD.replace('img_size: 64', 'img_size: big'), 'variants.nano.img_size', 'valid integer'),
    (GOOD.replace('num_classes: 10', 'num_classes: -1'), 'variants.nano.num_classes', 'greater than or equal to 0'),
    (GOOD.replace('sgformer_nano', 'sgformer_xl'), 'variants.nano.model', "unknown model 'sgformer_xl'"),
    (GOOD + 'trian: {}\n', 'trian', 'Extra inputs are not permitted'),
    ('variants: {}\n', 'variants', 'at least 1 item'),
])
def test_bad_file_names_key_and_reason(tmp_path, text, key, reason):
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as err:
        load_params(path)
    message = str(err.value)
    assert f'{path}: {key}: ' in message
    assert reason in message


def test_missing_and_malformed_files(tmp_path):
    with pytest.raises(ConfigError, match='file not found'):
        load_params(tmp_path / 'nope.yaml')
    with pytest.raises(ConfigError, match='not valid YAML'):
        load_params(write(tmp_path, 'variants: [unclosed'))


def test_check_command(tmp_path, capsys):
    assert main(['check', str(write(tmp_path, GOOD))]) == 0
    assert 'sgformer_nano' in capsys.readouterr().out
    assert main(['check', str(write(tmp_path, GOOD.replace('64', '65')))]) == 1
    err = capsys.readouterr().err
    assert 'variants.nano.img_size' in err and 'Traceback' not in err
