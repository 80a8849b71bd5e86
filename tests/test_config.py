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
    (GOOD + 'train: {lr: -0.1}\n', 'train.lr', 'greater than 0'),
    (GOOD + 'train: {epochs: ten}\n', 'train.epochs', 'valid integer'),
    (GOOD + '    lr: 0\n', 'variants.nano.lr', 'greater than 0'),
    (GOOD + 'convert: {write_mode: png}\n', 'convert.write_mode', "'raw', 'jpg', 'smart' or 'proportion'"),
    (GOOD + 'convert: {max_bad_fraction: 1.5}\n', 'convert.max_bad_fraction', 'less than or equal to 1'),
    (GOOD + 'loader: {os_cahce: true}\n', 'loader.os_cahce', 'Extra inputs are not permitted'),
    (GOOD + 'data: {backend: dali}\n', 'data.backend', "'ffcv' or 'folder'"),
    (GOOD + 'data: {source: /no/such/imagenet}\n', 'data.source', 'folder /no/such/imagenet not found'),
    (GOOD + 'augment: {auto_augment: original}\n', 'augment.auto_augment', 'only RandAugment'),
    (GOOD + 'sample: {min_size: 200, max_size: 100}\n', 'sample', 'larger than max_size'),
    (GOOD + '    batch_size: 10\n    world_size: 4\n', 'variants.nano.batch_size', 'not divisible by world_size 4'),
    (GOOD + 'train: {batch_size: 6, world_size: 4}\n', 'variants.nano.batch_size', 'not divisible by world_size 4'),
    (GOOD + 'train: {batch_size: 6, world_size: 2}\n', 'variants.nano.batch_size', 'need an even batch per rank'),
    (GOOD + 'recipes: {x: {model: resnet_9000}}\n', 'recipes.x.model', "unknown model 'resnet_9000'"),
    (GOOD + '    augment: {auto_augment: original}\n', 'variants.nano.augment.auto_augment', 'only RandAugment'),
    (GOOD + '    augment: {mixup: -1}\n', 'variants.nano.augment.mixup', 'greater than or equal to 0'),
    (GOOD + '    augment: {mixupp: 1}\n', 'variants.nano.augment.mixupp', 'Extra inputs are not permitted'),
    (GOOD + 'eval: {resolutions: [64, 100]}\n', 'eval.resolutions.1', 'multiple of 32'),
    (GOOD + 'eval: {weights: best}\n', 'eval.weights', "'ema' or 'model'"),
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


def test_variants_inherit_train_defaults(tmp_path):
    params = load_params(write(tmp_path, GOOD.replace('variants:', 'train: {lr: 0.004, epochs: 7, img_size: 96}\nvariants:')
                               + '  tiny:\n    model: sgformer_tiny\n    lr: 0.002\n'))
    nano, tiny = params.variants['nano'], params.variants['tiny']
    assert (nano.lr, nano.epochs, nano.img_size) == (0.004, 7, 64)  # img_size set by the variant wins
    assert (tiny.lr, tiny.epochs, tiny.img_size) == (0.002, 7, 96)


def test_repo_recipes_are_the_official_imagenet_settings():
    params = load_params(Path(__file__).resolve().parents[1] / 'params.yaml')
    assert {v.model for v in params.variants.values()} <= {'sgformer_nano', 'sgformer_tiny'}
    recipes = params.recipes
    assert {k: v.model for k, v in recipes.items()} == {'s': 'sgformer_s', 'm': 'sgformer_m', 'b': 'sgformer_b'}
    assert [recipes[k].drop_path_rate for k in 'smb'] == [0.1, 0.2, 0.4]
    for r in recipes.values():
        assert (r.batch_size // r.world_size, r.world_size, r.lr, r.weight_decay) == (128, 8, 1e-3, 0.05)
        assert (r.warmup_epochs, r.ema_decay, r.epochs, r.img_size, r.num_classes) == (20, 0.99992, 300, 224, 1000)


def test_existing_data_source_and_odd_batch_without_mixing_are_accepted(tmp_path):
    (tmp_path / 'imagenet').mkdir()
    text = GOOD + f'data: {{source: {tmp_path / "imagenet"}}}\naugment: {{mixup: 0, cutmix: 0}}\ntrain: {{batch_size: 3}}\n'
    params = load_params(write(tmp_path, text))
    assert params.data.source == str(tmp_path / 'imagenet') and params.variants['nano'].batch_size == 3


def test_linear_lr_scaling(tmp_path):
    text = GOOD + 'train: {batch_size: 256, lr: 1.0e-3, lr_base_batch: 1024}\n'
    params = load_params(write(tmp_path, text))
    assert params.variants['nano'].scaled_lr() == pytest.approx(2.5e-4)
    plain = load_params(write(tmp_path, GOOD))
    assert plain.variants['nano'].scaled_lr() == plain.variants['nano'].lr  # null: lr as given


def test_recipes_keep_the_official_lr_at_batch_1024():
    params = load_params(Path(__file__).resolve().parents[1] / 'params.yaml')
    for name in ('s', 'm', 'b'):
        recipe = params.recipes[name]
        assert recipe.batch_size == 1024 and recipe.scaled_lr() == pytest.approx(1e-3)


def test_variant_augment_overrides_only_the_keys_it_names(tmp_path):
    text = (GOOD + '    augment: {mixup: 0.0, auto_augment: null}\n' + '  other: {model: sgformer_nano}\n'
            + 'augment: {cutmix: 0.5, reprob: 0.0}\n')
    variant = load_params(write(tmp_path, text)).variants
    nano, other = variant['nano'].augment, variant['other'].augment
    assert (nano.mixup, nano.auto_augment, nano.cutmix, nano.reprob) == (0.0, None, 0.5, 0.0)
    assert (other.mixup, other.auto_augment, other.cutmix) == (0.8, 'rand-m9-mstd0.5-inc1', 0.5)


def test_recipes_carry_the_official_augmentation():
    params = load_params(Path(__file__).resolve().parents[1] / 'params.yaml')
    for name in ('s', 'm', 'b'):
        augment = params.recipes[name].augment
        assert (augment.auto_augment, augment.reprob, augment.mixup, augment.cutmix, augment.smoothing) == \
            ('rand-m9-mstd0.5-inc1', 0.25, 0.8, 1.0, 0.1)
        assert tuple(augment.scale) == (0.08, 1.0)
