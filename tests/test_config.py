"""params.yaml schema: good files load, bad ones name the file, the dotted key and the reason;
the repo's params.yaml is the schema's defaults, and the ImageNet profile is the official recipe."""
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from sgformer.cli import load_params_or_exit
from sgformer.config import SGFORMER_MODELS, ConfigError, Params, load_params, main

REPO = Path(__file__).resolve().parents[1]

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
    assert nano.model_kwargs() == dict(img_size=64, num_classes=10, drop_path_rate=0.0)


def test_repo_params_file_is_valid():
    load_params(Path(__file__).resolve().parents[1] / 'params.yaml')


@pytest.mark.parametrize('text, key, reason', [
    (GOOD.replace('img_size: 64', 'img_sise: 64'), 'variants.nano.img_sise', 'Extra inputs are not permitted'),
    (GOOD.replace('img_size: 64', 'img_size: 70'), 'variants.nano.img_size', 'multiple of 32'),
    (GOOD.replace('img_size: 64', 'img_size: big'), 'variants.nano.img_size', 'valid integer'),
    (GOOD.replace('num_classes: 10', 'num_classes: -1'), 'variants.nano.num_classes', 'greater than or equal to 0'),
    (GOOD.replace('sgformer_nano', 'sgformer_xl'), 'variants.nano.model', "Input should be 'sgformer_nano'"),
    (GOOD + 'trian: {}\n', 'trian', 'Extra inputs are not permitted'),
    ('variants: {}\n', 'variants', 'at least 1 item'),
    (GOOD + 'train: {lr: -0.1}\n', 'train.lr', 'greater than 0'),
    (GOOD + 'train: {epochs: ten}\n', 'train.epochs', 'valid integer'),
    (GOOD + '    lr: 0\n', 'variants.nano.lr', 'greater than 0'),
    (GOOD + 'convert: {write_mode: png}\n', 'convert.write_mode', "'raw', 'jpg', 'smart' or 'proportion'"),
    (GOOD + 'convert: {max_bad_fraction: 1.5}\n', 'convert.max_bad_fraction', 'less than or equal to 1'),
    (GOOD + 'loader: {os_cahce: true}\n', 'loader.os_cahce', 'Extra inputs are not permitted'),
    (GOOD + 'data: {backend: dali}\n', 'data.backend', "'ffcv' or 'folder'"),
    (GOOD + 'augment: {auto_augment: original}\n', 'augment.auto_augment', 'only RandAugment'),
    (GOOD + 'sample: {min_size: 200, max_size: 100}\n', 'sample', 'larger than max_size'),
    (GOOD + '    batch_size: 10\n    world_size: 4\n', 'variants.nano.batch_size', 'not divisible by world_size 4'),
    (GOOD + 'train: {batch_size: 6, world_size: 4}\n', 'variants.nano.batch_size', 'not divisible by world_size 4'),
    (GOOD + 'train: {batch_size: 6, world_size: 2}\naugment: {mixup: 0.8}\n', 'variants.nano.batch_size',
     'need an even batch per rank'),
    (GOOD + 'recipes: {x: {model: sgformer_s}}\n', 'recipes', 'Extra inputs are not permitted'),
    (GOOD + 'augment: {auto_augment: rand-m9-foo3}\n', 'augment.auto_augment', "unknown section 'foo3'"),
    (GOOD + 'augment: {auto_augment: rand-m9x}\n', 'augment.auto_augment', "'m9x' needs a number after 'm'"),
    (GOOD + 'augment: {auto_augment: rand-m9-tfancy}\n', 'augment.auto_augment', "unknown transform set 'tfancy'"),
    (GOOD + '  nano v2: {model: sgformer_nano}\n', 'variants', "'nano v2' may hold only letters"),
    (GOOD + '  nano/v2: {model: sgformer_nano}\n', 'variants', "e.g. 'nano_v2'"),
    (GOOD + '  nano@2: {model: sgformer_nano}\n', 'variants', "'nano@2' may hold only"),
    (GOOD + '  na$x: {model: sgformer_nano}\n', 'variants', "'na$x' may hold only"),
    (GOOD + '  nano.v2: {model: sgformer_nano}\n', 'variants', "'nano.v2' may hold only"),
    (GOOD + '  -nano: {model: sgformer_nano}\n', 'variants', "'-nano' may hold only"),
    ('[1, 2]\n', '', 'expected a mapping of sections'),
    (GOOD + '    augment: {auto_augment: original}\n', 'variants.nano.augment.auto_augment', 'only RandAugment'),
    (GOOD + '    augment: {mixup: -1}\n', 'variants.nano.augment.mixup', 'greater than or equal to 0'),
    (GOOD + '    augment: {mixupp: 1}\n', 'variants.nano.augment.mixupp', 'Extra inputs are not permitted'),
    (GOOD + 'eval: {resolutions: [64, 100]}\n', 'eval.resolutions.1', 'multiple of 32'),
    (GOOD + 'eval: {weights: best}\n', 'eval.weights', "'ema' or 'raw'"),
    (GOOD + 'train: {batch_size: 8, grad_accum_steps: 3}\n', 'variants.nano.grad_accum_steps',
     '3 does not divide the batch per rank (8 / world_size 1 = 8)'),
    (GOOD + 'train: {batch_size: 8, world_size: 2, grad_accum_steps: 8}\n', 'variants.nano.grad_accum_steps',
     'does not divide the batch per rank'),
    (GOOD + '    progressive_resize: {min_size: 96, start_ramp: 1, end_ramp: 3}\n',
     'variants.nano.progressive_resize.min_size', '96 is above img_size 64'),
    (GOOD + '    progressive_resize: {min_size: 40, start_ramp: 1, end_ramp: 3}\n',
     'variants.nano.progressive_resize.min_size', 'multiple of 32'),
    (GOOD + '    progressive_resize: {min_size: 32, start_ramp: 4, end_ramp: 3}\n',
     'variants.nano.progressive_resize.start_ramp', '4 is after end_ramp 3'),
    (GOOD + '    progressive_resize: {min_size: 32, start_ramp: 9, end_ramp: 9}\n',
     'variants.nano.progressive_resize.start_ramp', 'past the last epoch, 7 (epochs: 8)'),
    (GOOD + '    progressive_resize: {min_size: 32, start_ramp: 2, end_ramp: 8}\n',
     'variants.nano.progressive_resize.end_ramp', 'past the last epoch, 7 (epochs: 8)'),
    (GOOD + '    layer_decay: 1.5\n', 'variants.nano.layer_decay', 'less than or equal to 1'),
    (GOOD + '    init_from: ""\n', 'variants.nano.init_from', 'at least 1 character'),
])
def test_bad_file_names_key_and_reason(tmp_path, text, key, reason):
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as err:
        load_params(path)
    message = str(err.value)
    assert f'{path}: {key}: ' in message if key else f'{path}: ' in message
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


def test_get_command_prints_one_resolved_value(tmp_path, capsys):
    """What a launch script reads (launch/slurm/train.sbatch: runtime.max_restarts)."""
    path = str(write(tmp_path, GOOD))
    for key, printed in (('runtime.max_restarts', '3'), ('variants.nano.epochs', '8'), ('train.init_from', 'null'),
                         ('data.source', 'data/sample'), ('runtime.compile', 'false')):
        assert main(['get', key, path]) == 0
        assert capsys.readouterr().out == printed + '\n'
    assert main(['get', 'runtime', path]) == 0
    assert 'collective_timeout_s: 600\n' in capsys.readouterr().out
    assert main(['get', 'runtime.nope', path]) == 1
    assert capsys.readouterr().err == f'error: {path}: runtime.nope: no such key\n'
    assert main(['get']) == 2


def test_variants_inherit_train_defaults(tmp_path):
    params = load_params(write(tmp_path, GOOD.replace('variants:', 'train: {lr: 0.004, epochs: 7, img_size: 96}\nvariants:')
                               + '  tiny:\n    model: sgformer_tiny\n    lr: 0.002\n'))
    nano, tiny = params.variants['nano'], params.variants['tiny']
    assert (nano.lr, nano.epochs, nano.img_size) == (0.004, 7, 64)  # img_size set by the variant wins
    assert (tiny.lr, tiny.epochs, tiny.img_size) == (0.002, 7, 96)


def test_repo_params_state_the_schema_defaults_and_nothing_else():
    """params.yaml is the demo and the demo is the schema's defaults: no value in the file is a
    second opinion (variants aside, which are the demo's own)."""
    written = yaml.safe_load((REPO / 'params.yaml').read_text())
    defaults = Params(variants={'x': {'model': 'sgformer_nano'}}).model_dump(mode='json')
    for section, values in written.items():
        if section == 'variants':
            continue
        for key, value in values.items():
            default = defaults[section][key]
            assert value == (list(default) if isinstance(default, tuple) else default), f'{section}.{key}'


def test_validation_imports_neither_torch_nor_timm():
    code = ('import sys; from sgformer.config import load_params; load_params("params.yaml"); '
            'import sgformer.datasets.sample; print(sorted(m for m in ("torch", "timm") if m in sys.modules))')
    out = subprocess.run([sys.executable, '-c', code], cwd=REPO, capture_output=True, text=True, check=True).stdout
    assert out.strip() == '[]'


def test_model_names_are_the_registered_ones():
    import timm
    import sgformer.models  # noqa: F401  (registers the sgformer_* models with timm)
    assert sorted(SGFORMER_MODELS) == sorted(timm.list_models('sgformer_*'))


def test_imagenet_profile_is_the_official_recipe():
    params = load_params(REPO / 'profiles' / 'imagenet.yaml')
    variants = params.variants
    assert {k: v.model for k, v in variants.items()} == {'s': 'sgformer_s', 'm': 'sgformer_m', 'b': 'sgformer_b'}
    assert [variants[k].drop_path_rate for k in 'smb'] == [0.1, 0.2, 0.4]
    for r in variants.values():
        assert (r.batch_size // r.world_size, r.world_size, r.scaled_lr(), r.weight_decay) == (128, 8, 1e-3, 0.05)
        assert (r.warmup_epochs, r.ema_decay, r.epochs, r.img_size, r.num_classes) == (20, 0.99992, 300, 224, 1000)
        augment = r.augment
        assert (augment.auto_augment, augment.reprob, augment.mixup, augment.cutmix, augment.smoothing) == \
            ('rand-m9-mstd0.5-inc1', 0.25, 0.8, 1.0, 0.1)
        assert tuple(augment.scale) == (0.08, 1.0)
    assert params.convert.max_resolution == 500 and params.runtime.compile == 'auto'


@pytest.mark.parametrize('profile', ['imagenet.yaml', 'imagenet-budget.yaml'])
def test_imagenet_profile_states_every_key(profile):
    """`dvc exp run -S key=value` needs the key in the file."""
    written = yaml.safe_load((REPO / 'profiles' / profile).read_text())
    defaults = Params(variants={'x': {'model': 'sgformer_nano'}}).model_dump()
    assert set(written) == set(defaults)
    for section, values in defaults.items():
        if section != 'variants':
            assert set(written[section]) == set(values), section


def test_budget_profile_is_the_official_s_recipe_with_a_ramp_in_half_the_epochs():
    official = load_params(REPO / 'profiles' / 'imagenet.yaml').variants['s']
    budget = load_params(REPO / 'profiles' / 'imagenet-budget.yaml').variants['s']
    differ = {k for k in type(official).model_fields if getattr(official, k) != getattr(budget, k)}
    assert differ == {'epochs', 'warmup_epochs', 'progressive_resize'}
    assert (budget.epochs, budget.progressive_resize.min_size, budget.img_size) == (150, 160, 224)


def test_validation_never_reads_the_data_folder_and_the_stages_check_it(tmp_path):
    path = write(tmp_path, GOOD + 'data: {source: /no/such/imagenet}\n')
    assert load_params(path).data.source == '/no/such/imagenet'
    with pytest.raises(SystemExit, match=f'error: {path}: data.source: folder /no/such/imagenet not found'):
        load_params_or_exit(path, data_source=True)
    sample = write(tmp_path, GOOD + 'data: {source: data/elsewhere}\nsample: {out: data/elsewhere}\n')
    assert load_params_or_exit(sample, data_source=True).data.source == 'data/elsewhere'  # make_sample writes it


def test_a_val_class_missing_from_train_is_caught_by_the_stages_check(tmp_path):
    for split, classes in (('train', ['n01', 'n02']), ('val', ['n01', 'n03'])):
        for name in classes:
            (tmp_path / 'imagenet' / split / name).mkdir(parents=True)
    path = write(tmp_path, GOOD + f'data: {{source: {tmp_path / "imagenet"}}}\n')
    with pytest.raises(SystemExit, match=r"data.source: .*only in train: \['n02'\], only in val: \['n03'\]"):
        load_params_or_exit(path, data_source=True)


def test_existing_data_source_and_odd_batch_without_mixing_are_accepted(tmp_path):
    for split in ('train', 'val'):
        (tmp_path / 'imagenet' / split / 'n01').mkdir(parents=True)
    text = GOOD + f'data: {{source: {tmp_path / "imagenet"}}}\naugment: {{mixup: 0, cutmix: 0}}\ntrain: {{batch_size: 3}}\n'
    params = load_params_or_exit(write(tmp_path, text), data_source=True)
    assert params.data.source == str(tmp_path / 'imagenet') and params.variants['nano'].batch_size == 3


def test_linear_lr_scaling(tmp_path):
    text = GOOD + 'train: {batch_size: 256, lr: 1.0e-3, lr_base_batch: 1024}\n'
    params = load_params(write(tmp_path, text))
    assert params.variants['nano'].scaled_lr() == pytest.approx(2.5e-4)
    plain = load_params(write(tmp_path, GOOD))
    assert plain.variants['nano'].scaled_lr() == plain.variants['nano'].lr  # null: lr as given


def test_variant_augment_overrides_only_the_keys_it_names(tmp_path):
    text = (GOOD + '    augment: {mixup: 0.0, auto_augment: null}\n' + '  other: {model: sgformer_nano}\n'
            + 'augment: {cutmix: 0.5, mixup: 0.8, reprob: 0.1, auto_augment: rand-m9-mstd0.5-inc1}\n')
    variant = load_params(write(tmp_path, text)).variants
    nano, other = variant['nano'].augment, variant['other'].augment
    assert (nano.mixup, nano.auto_augment, nano.cutmix, nano.reprob) == (0.0, None, 0.5, 0.1)
    assert (other.mixup, other.auto_augment, other.cutmix) == (0.8, 'rand-m9-mstd0.5-inc1', 0.5)


def test_run_settings_are_the_variants_own_values(tmp_path):
    text = GOOD + '    epochs: 300\n' + 'train: {epochs: 8}\n'
    settings = load_params(write(tmp_path, text)).run_settings('nano')
    assert settings['train']['epochs'] == 300 and settings['model'] == 'sgformer_nano'
    assert 'variants' not in settings and set(settings) >= {'data', 'loader', 'runtime', 'checkpoint', 'augment'}
