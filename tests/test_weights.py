"""`train.init_from`: an export or an official checkpoint loads into a fresh model, pos_embed
resampled and the classifier re-initialised for another class count; every bad source is one line."""
import argparse
import json
from pathlib import Path

import pytest
import timm
import torch

import sgformer.models  # noqa: F401  (registers the sgformer_* models with timm)
from sgformer.export import save_export
from sgformer.weights import InitError, load_init_weights

FIXTURES = Path(__file__).resolve().parent / 'fixtures'
KWARGS = dict(num_classes=3, img_size=64, drop_path_rate=0.0)


@pytest.fixture
def export(tmp_path):
    torch.manual_seed(0)
    ema = timm.create_model('sgformer_nano', **KWARGS)
    raw = timm.create_model('sgformer_nano', **KWARGS)
    save_export(tmp_path / 'nano', model_name='sgformer_nano', model_kwargs=KWARGS,
                weights=dict(ema=ema.state_dict(), raw=raw.state_dict()), class_index={'a': 0, 'b': 1, 'c': 2},
                card=dict(variant='nano', metrics={}, mlflow_run_id=None))
    return tmp_path / 'nano', ema


def test_the_export_s_ema_weights_load_at_another_size(export):
    folder, ema = export
    model = timm.create_model('sgformer_nano', num_classes=3, img_size=96)
    note = load_init_weights(model, str(folder), 'sgformer_nano')
    assert note.startswith(f'init_from {folder}: loaded') and 'classifier' not in note
    assert torch.equal(model.head.weight, ema.head.weight) and torch.equal(model.stem.conv[0].conv.weight,
                                                                           ema.stem.conv[0].conv.weight)
    assert model.pos_embed.shape[1] == (96 // 4) ** 2  # resampled from the 16 x 16 grid


def test_another_class_count_gets_a_fresh_classifier(export):
    folder, ema = export
    torch.manual_seed(1)
    model = timm.create_model('sgformer_nano', num_classes=5, img_size=64)
    note = load_init_weights(model, str(folder), 'sgformer_nano')
    assert note.endswith('classifier re-initialised for 5 classes (the weights have 3)')
    assert model.head.weight.shape == (5, 128)
    assert torch.equal(model.stages[-1].norm.weight, ema.stages[-1].norm.weight)


def test_an_official_checkpoint_loads_its_ema_weights(tmp_path):
    fixture = torch.load(FIXTURES / 'official_sgformer_tiny.pt', weights_only=True)  # sgformer_nano's shapes
    halved = {f'module.{k}': v * 0.5 if v.is_floating_point() else v for k, v in fixture['state_dict'].items()}
    torch.save({'state_dict': halved, 'state_dict_ema': fixture['state_dict'], 'args': argparse.Namespace()},
               tmp_path / 'checkpoint.pth')
    model = timm.create_model('sgformer_nano', num_classes=10, img_size=224).eval()
    assert 'classifier' not in load_init_weights(model, str(tmp_path / 'checkpoint.pth'), 'sgformer_nano')
    with torch.no_grad():
        torch.testing.assert_close(model(fixture['input']), fixture['logits'], atol=1e-4, rtol=0)


@pytest.mark.parametrize('make, reason', [
    (lambda tmp: tmp / 'missing', 'not found'),
    (lambda tmp: (tmp / 'junk.pth').write_bytes(b'not a checkpoint') and tmp / 'junk.pth', 'not a readable checkpoint'),
    (lambda tmp: (tmp / 'other.pth', torch.save({'conv1.weight': torch.zeros(1)}, tmp / 'other.pth'))[0],
     'not an SG-Former checkpoint'),
])
def test_bad_sources_are_one_line(tmp_path, make, reason):
    source = make(tmp_path)
    with pytest.raises(InitError, match=reason) as error:
        load_init_weights(timm.create_model('sgformer_nano', **KWARGS), str(source), 'sgformer_nano')
    assert '\n' not in str(error.value) and str(source) in str(error.value)


def test_an_export_of_another_model_is_refused(export, tmp_path):
    folder, _ = export
    card = json.loads((folder / 'card.json').read_text())
    (folder / 'card.json').write_text(json.dumps(dict(card, model='resnet18')))
    with pytest.raises(InitError, match='holds resnet18 weights, the run trains sgformer_nano'):
        load_init_weights(timm.create_model('sgformer_nano', **KWARGS), str(folder), 'sgformer_nano')


def test_weights_of_another_size_are_refused(export):
    folder, _ = export
    card = json.loads((folder / 'card.json').read_text())
    (folder / 'card.json').write_text(json.dumps(dict(card, model='sgformer_tiny')))
    with pytest.raises(InitError, match='does not fit sgformer_tiny'):
        load_init_weights(timm.create_model('sgformer_tiny', **KWARGS), str(folder), 'sgformer_tiny')
