"""The export format: plain timm (`local-dir:`), `load_export`, the card, and the class check."""
import json

import pytest
import timm
import torch

import sgformer.models  # noqa: F401  (registers the sgformer_* models with timm)
from sgformer.export import ExportError, check_classes, load_export, read_card, save_export

KWARGS = dict(num_classes=3, img_size=64, drop_path_rate=0.1)
CLASSES = {'n01': 0, 'n02': 1, 'n03': 2}


def trained_weights(seed: int) -> dict[str, torch.Tensor]:
    torch.manual_seed(seed)
    model = timm.create_model('sgformer_nano', **KWARGS)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)  # not the init: a reload that silently re-inits fails
    return model.state_dict()


@pytest.fixture
def export(tmp_path):
    weights = dict(ema=trained_weights(0), raw=trained_weights(1))
    card = save_export(tmp_path / 'nano', model_name='sgformer_nano', model_kwargs=KWARGS, weights=weights,
                       class_index=CLASSES, card=dict(variant='nano', metrics={'top1': 0.5}, mlflow_run_id='abc'))
    return tmp_path / 'nano', weights, card


def logits(model, x):
    with torch.no_grad():
        return model.eval()(x)


def test_folder_holds_timm_hub_files_and_the_card(export):
    folder, _, card = export
    assert sorted(p.name for p in folder.parent.iterdir()) == ['nano']  # no temporary folder left
    assert sorted(p.name for p in folder.iterdir()) == ['card.json', 'config.json', 'model.safetensors', 'raw.safetensors']
    assert read_card(folder) == card and card['weights'] == {'ema': 'model.safetensors', 'raw': 'raw.safetensors'}
    config = json.loads((folder / 'config.json').read_text())
    assert config['architecture'] == 'sgformer_nano' and config['label_names'] == ['n01', 'n02', 'n03']
    assert config['pretrained_cfg']['input_size'] == [3, 64, 64]


def test_local_dir_loads_the_ema_weights_in_plain_timm(export):
    folder, weights, _ = export
    model = timm.create_model(f'local-dir:{folder}', pretrained=True)
    reference = timm.create_model('sgformer_nano', **KWARGS)
    reference.load_state_dict(weights['ema'])
    x = torch.randn(2, 3, 64, 64)
    assert torch.equal(logits(model, x), logits(reference, x))
    assert tuple(timm.data.resolve_data_config(model=model)['input_size']) == (3, 64, 64)


def test_load_export_picks_weights_and_resolution(export):
    folder, weights, _ = export
    ema, _ = load_export(folder, 'ema')
    raw, _ = load_export(folder, 'raw')
    x = torch.randn(2, 3, 64, 64)
    assert not torch.equal(logits(ema, x), logits(raw, x))
    at_96, card = load_export(folder, 'ema', img_size=96)
    assert logits(at_96, torch.randn(1, 3, 96, 96)).shape == (1, 3) and card['model_kwargs']['img_size'] == 64


def test_an_export_without_ema_names_one_file(tmp_path):
    card = save_export(tmp_path / 'x', model_name='sgformer_nano', model_kwargs=KWARGS, weights=dict(raw=trained_weights(2)),
                       class_index=None, card={})
    assert card['weights'] == {'ema': 'model.safetensors', 'raw': 'model.safetensors'}
    assert not (tmp_path / 'x' / 'raw.safetensors').exists()


def test_a_rewrite_replaces_the_folder_whole(export):
    folder, _, _ = export
    (folder / 'stale.txt').write_text('from an older export')
    save_export(folder, model_name='sgformer_nano', model_kwargs=KWARGS, weights=dict(raw=trained_weights(3)),
                class_index=CLASSES, card={})
    assert not (folder / 'stale.txt').exists() and not (folder / 'raw.safetensors').exists()


def test_class_check_names_the_mismatch(export):
    folder, _, card = export
    check_classes(folder, card, CLASSES, where='betons')
    with pytest.raises(ExportError, match=f'{folder}: the export has 3 classes but betons has 2'):
        check_classes(folder, card, {'n01': 0, 'n02': 1}, where='betons')
    with pytest.raises(ExportError, match='other classes than betons .*n04'):
        check_classes(folder, card, {'n01': 0, 'n02': 1, 'n04': 2}, where='betons')
    with pytest.raises(ExportError, match='card.json not found'):
        read_card('/nonexistent')
