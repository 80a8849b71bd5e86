"""Exported safetensors reload in plain timm and give the same logits."""
import json

import timm
import torch

import sgformer  # noqa: F401
from sgformer.train.export import save_weights, write_model_card


def test_export_reloads_in_timm(tmp_path):
    kwargs = dict(num_classes=3, img_size=64, drop_path_rate=0.1)
    model = timm.create_model('sgformer_nano', **kwargs).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)  # not the init: a reload that silently re-inits fails
    save_weights(model.state_dict(), tmp_path / 'ema.safetensors')
    card = write_model_card(tmp_path / 'card.json', variant='nano', model='sgformer_nano', model_kwargs=kwargs,
                            weights={'ema': 'ema.safetensors'}, metrics={'top1': 0.5}, class_index={'a': 0, 'b': 1, 'c': 2})
    assert json.loads((tmp_path / 'card.json').read_text()) == card
    assert not list(tmp_path.glob('.*.tmp'))

    reloaded = timm.create_model(card['model'], pretrained=True, **card['model_kwargs'], pretrained_cfg_overlay=dict(
        file=str(tmp_path / card['weights']['ema']), num_classes=card['model_kwargs']['num_classes'])).eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(reloaded(x), model(x))
