"""SG-Former model: official exactness, any resolution, timm contract."""
import argparse
import datetime
import json
import pickle
from pathlib import Path

import pytest
import timm
import torch
import torch.nn.functional as F

import sgformer.models  # noqa: F401  (registers the sgformer_* models with timm)
from sgformer.models.sgformer import (
    SG_BANDS,
    HybridScaleAttention,
    SGFormer,
    band_index,
    band_layout,
    checkpoint_filter_fn,
    load_official_checkpoint,
    sincos_pos_embed,
)

FIXTURES = Path(__file__).resolve().parents[1] / 'fixtures'
SMALL_VARIANTS = ['sgformer_nano', 'sgformer_tiny']
ALL_VARIANTS = SMALL_VARIANTS + ['sgformer_s', 'sgformer_m', 'sgformer_b']
OFFICIAL_PARAMS = {'sgformer_s': 22_545_981, 'sgformer_m': 38_689_316, 'sgformer_b': 77_950_293}


def load_fixture(name: str) -> dict:
    return torch.load(FIXTURES / name, weights_only=True)


def official_model(fixture: dict) -> SGFormer:
    model = SGFormer(**fixture['config'])
    model.load_state_dict(checkpoint_filter_fn(fixture['state_dict'], model), strict=True)
    return model.eval()


def num_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


# --- exactness against the official implementation -------------------------------------------

def test_official_init_fixture_float32():
    fixture = load_fixture('official_sgformer_tiny.pt')
    model = official_model(fixture)
    with torch.no_grad():
        logits = model(fixture['input'])
    torch.testing.assert_close(logits, fixture['logits'], atol=1e-4, rtol=0)


@pytest.mark.parametrize('name', ['official_sgformer_tiny.pt', 'official_sgformer_tiny_randomized.pt'])
def test_fixture_float64(name):
    fixture = load_fixture(name)
    model = official_model(fixture).double()
    with torch.no_grad():
        logits = model(fixture['input'].double())
    torch.testing.assert_close(logits, fixture['logits_float64'], atol=1e-6, rtol=0)


def test_significance_sort_matches_official():
    """Each self-guided block orders its tokens exactly as the official code does."""
    fixture = load_fixture('official_sgformer_tiny_randomized.pt')
    model = official_model(fixture).double()
    maps = model.significance_maps(fixture['input'].double())
    official_names = {'stages.0.blocks.1': 'block1.1', 'stages.1.blocks.1': 'block2.1', 'stages.2.blocks.1': 'block3.1'}
    assert set(maps) == set(official_names)
    for name, official in official_names.items():
        order = maps[name].flatten(1).argsort(dim=1)
        assert torch.equal(order, fixture['sg_sort_index_float64'][official]), name


def test_sincos_init_matches_official():
    fixture = load_fixture('official_sgformer_tiny.pt')
    expected = fixture['state_dict']['pos_embed']
    torch.testing.assert_close(sincos_pos_embed(expected.shape[-1], (56, 56)), expected, atol=1e-6, rtol=0)
    model = SGFormer(**fixture['config'])
    torch.testing.assert_close(model.pos_embed.detach(), expected, atol=1e-6, rtol=0)


def test_official_sgformer_s_keys_load_strict():
    shapes = json.loads((FIXTURES / 'official_sgformer_s_keys.json').read_text())
    official = {k: torch.randn(shape) for k, shape in shapes.items()}
    model = timm.create_model('sgformer_s')
    converted = checkpoint_filter_fn(official, model)
    model.load_state_dict(converted, strict=True)
    assert num_params(model) == sum(t.numel() for t in official.values()) == OFFICIAL_PARAMS['sgformer_s']
    # The fused q of a hybrid-scale block is the official q1 then q2.
    q = model.stages[0].blocks[0].attn.q.weight
    assert torch.equal(q, torch.cat([official['block1.0.attn.q1.weight'], official['block1.0.attn.q2.weight']]))


@pytest.mark.parametrize('variant', ['sgformer_m', 'sgformer_b'])
def test_param_counts(variant):
    model = timm.create_model(variant, device='meta')
    assert num_params(model) == OFFICIAL_PARAMS[variant]


# --- official checkpoint files ----------------------------------------------------------------

def official_checkpoint(tmp_path: Path, fixture: dict) -> tuple[Path, dict]:
    """A checkpoint written the way the official CheckpointSaver writes it: DDP prefixes,
    `state_dict` + `state_dict_ema`, and the argparse Namespace of the run."""
    ema = {f'module.{k}': v for k, v in fixture['state_dict'].items()}
    raw = {k: torch.zeros_like(v) for k, v in ema.items()}
    checkpoint = {
        'epoch': 299,
        'arch': 'sgformer_s',
        'state_dict': raw,
        'state_dict_ema': ema,
        'optimizer': {'state': {}, 'param_groups': [{'lr': 1e-5, 'params': [0]}]},
        'args': argparse.Namespace(model='sgformer_s', lr=1e-3, drop_path=0.1, model_ema=True, data='/imagenet'),
        'metric': 83.2,
        'version': 2,
    }
    path = tmp_path / 'model_best.pth.tar'
    torch.save(checkpoint, path)
    return path, checkpoint


def test_official_checkpoint_loads_safely(tmp_path):
    fixture = load_fixture('official_sgformer_tiny.pt')
    path, _ = official_checkpoint(tmp_path, fixture)
    checkpoint = load_official_checkpoint(path)
    assert checkpoint['args'].model == 'sgformer_s'
    model = SGFormer(**fixture['config'])
    model.load_state_dict(checkpoint_filter_fn(checkpoint, model), strict=True)  # EMA picked over raw
    with torch.no_grad():
        logits = model.eval()(fixture['input'])
    torch.testing.assert_close(logits, fixture['logits'], atol=1e-4, rtol=0)


def test_official_checkpoint_refuses_other_globals(tmp_path):
    """Only the Namespace is allow-listed: any other pickled object still fails to load."""
    path = tmp_path / 'evil.pth'
    torch.save({'state_dict': {}, 'args': argparse.Namespace(start=datetime.timedelta(days=1))}, path)
    with pytest.raises(pickle.UnpicklingError):
        load_official_checkpoint(path)


def test_create_model_pretrained_file_round_trip(tmp_path):
    """An official checkpoint file loads through plain timm once `sgformer` is imported."""
    fixture = load_fixture('official_sgformer_tiny.pt')
    reference = official_model(fixture)
    path, _ = official_checkpoint(tmp_path, fixture)
    config = {k: v for k, v in fixture['config'].items() if k != 'norm_layer'}
    model = timm.create_model('sgformer_nano', pretrained=True, **config,
                              pretrained_cfg_overlay=dict(file=str(path), num_classes=config['num_classes']))
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(model(fixture['input']), reference(fixture['input']), atol=0, rtol=0)
    assert model.pretrained_cfg['crop_pct'] == 0.9
    assert model.pretrained_cfg['interpolation'] == 'bicubic'
    data_cfg = timm.data.resolve_data_config(model=model)
    assert data_cfg['crop_pct'] == 0.9 and data_cfg['mean'] == timm.data.IMAGENET_DEFAULT_MEAN
    # timm's loader leaves a `safe_globals([Namespace])` block; ours must still load afterwards
    assert load_official_checkpoint(path)['args'].model == 'sgformer_s'


# --- any resolution ---------------------------------------------------------------------------

RESOLUTIONS = [(64, 64), (96, 96), (160, 224), (224, 224), (256, 256), (384, 384), (448, 448), (96, 320)]


@pytest.mark.parametrize('variant', SMALL_VARIANTS)
@pytest.mark.parametrize('size', RESOLUTIONS, ids=lambda s: f'{s[0]}x{s[1]}')
def test_forward_shapes_any_resolution(variant, size):
    model = timm.create_model(variant, num_classes=5).eval()
    x = torch.randn(2, 3, *size)
    with torch.no_grad():
        feats = model.forward_features(x)
        logits = model.forward_head(feats)
    assert feats.shape == (2, size[0] // 32, size[1] // 32, model.num_features)
    assert logits.shape == (2, 5)
    assert torch.isfinite(logits).all()


@pytest.mark.parametrize('variant', ['sgformer_s', 'sgformer_m', 'sgformer_b'])
def test_large_variants_forward(variant):
    model = timm.create_model(variant).eval()
    with torch.no_grad():
        logits = model(torch.randn(1, 3, 96, 128))
    assert logits.shape == (1, 1000) and torch.isfinite(logits).all()


def test_band_layout_official_geometry():
    """At 224 and 448 every band splits exactly (no resampling) into the official token counts."""
    official_224 = {8: [4, 28, 28], 4: [4, 28, 28], 2: [49, 98]}
    for side, scale in ((224, 1), (448, 4)):
        for stage, sr in enumerate((8, 4, 2)):
            N = (side // (4 * 2 ** stage)) ** 2
            layout = band_layout(N, sr)
            assert sum(L for L, _, _ in layout) == N
            assert all(L == n * r for L, r, n in layout)
            assert [n for _, _, n in layout] == [c * scale for c in official_224[sr]]


def test_band_layout_other_sizes():
    layout = band_layout(16 * 16, 8)  # 64 x 64 input, stage 1
    assert [L for L, _, _ in layout] == [64, 128, 64]
    assert [n for _, _, n in layout] == [1, 2, 2]  # 64/196 -> 1 (at least one), 128/56 -> 2, 64/28 -> 2
    assert band_layout(12 * 10, 4) == [(30, 49, 1), (60, 14, 4), (30, 7, 4)]


def test_padded_windows_match_per_window_reference():
    """Where the map is not a multiple of 7, partial windows attend only to real tokens, and
    padding neither receives attention nor counts as a query in the significance."""
    torch.manual_seed(0)
    attn = HybridScaleAttention(dim=16, num_heads=4, sr_ratio=2).double().eval()
    B, H, W, h, d = 2, 10, 12, 2, 4
    q = torch.randn(B, H, W, h * d, dtype=torch.float64)
    kv = torch.randn(B, H, W, 2 * h * d, dtype=torch.float64)
    out, received = attn._local(q, kv)
    assert out.shape == (B, H, W, h * d) and received.shape == (B, H, W)

    k, v = kv.view(B, H, W, 2, h, d).unbind(3)
    qh = q.view(B, H, W, h, d)
    for y0 in range(0, H, 7):
        for x0 in range(0, W, 7):
            ys, xs = slice(y0, min(y0 + 7, H)), slice(x0, min(x0 + 7, W))
            qw, kw, vw = (t[:, ys, xs].reshape(B, -1, h, d).transpose(1, 2) for t in (qh, k, v))
            probs = ((qw @ kw.transpose(-2, -1)) * attn.scale).softmax(-1)  # B, h, n, n
            expected_out = (probs @ vw).transpose(1, 2).reshape(B, *out[:, ys, xs].shape[1:])
            torch.testing.assert_close(out[:, ys, xs], expected_out)
            expected_received = probs.mean(1).mean(1).view(B, *received[:, ys, xs].shape[1:])
            torch.testing.assert_close(received[:, ys, xs], expected_received)


# --- training behaviour and the timm contract ------------------------------------------------

@pytest.mark.parametrize('size', [(224, 224), (96, 160)], ids=['224', '96x160'])
def test_gradients_reach_every_parameter(size):
    torch.manual_seed(0)
    model = timm.create_model('sgformer_nano', num_classes=4, drop_path_rate=0.1).train()
    loss = F.cross_entropy(model(torch.randn(2, 3, *size)), torch.tensor([0, 3]))
    loss.backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not missing, missing
    assert any('band_merge' in n for n, _ in model.named_parameters())


def test_grad_checkpointing_same_gradients():
    torch.manual_seed(0)
    model = timm.create_model('sgformer_nano', num_classes=4).train()
    x = torch.randn(2, 3, 64, 96)
    model(x).square().sum().backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    model.set_grad_checkpointing(True)
    model(x).square().sum().backward()
    for n, p in model.named_parameters():
        torch.testing.assert_close(p.grad, grads[n], msg=n)


def test_eval_is_deterministic():
    model = timm.create_model('sgformer_tiny', drop_path_rate=0.2).eval()
    x = torch.randn(2, 3, 128, 96)
    with torch.no_grad():
        assert torch.equal(model(x), model(x))


def test_drop_path_rates_rise_linearly():
    model = timm.create_model('sgformer_tiny', drop_path_rate=0.3)
    rates = [blk.drop_path1.drop_prob for stage in model.stages for blk in stage.blocks if hasattr(blk.drop_path1, 'drop_prob')]
    expected = torch.linspace(0, 0.3, sum(len(s.blocks) for s in model.stages)).tolist()[1:]
    assert rates == pytest.approx(expected)


def test_block_types_alternate():
    model = timm.create_model('sgformer_s', device='meta')
    types = [[blk.attn_type for blk in stage.blocks] for stage in model.stages]
    assert types[0] == ['hybrid', 'guided']
    assert types[2] == ['hybrid', 'guided'] * 8
    assert types[3] == ['global']


def test_odd_depth_rejected():
    with pytest.raises(ValueError, match='depth must be even'):
        SGFormer(depths=(2, 3, 2, 1), embed_dims=(16, 32, 64, 128), num_heads=(2, 2, 4, 4))


def test_reset_classifier_and_pre_logits():
    model = timm.create_model('sgformer_nano', num_classes=10).eval()
    x = torch.randn(1, 3, 64, 64)
    model.reset_classifier(3)
    assert model(x).shape == (1, 3)
    assert model.get_classifier().out_features == 3
    assert model.forward_head(model.forward_features(x), pre_logits=True).shape == (1, model.num_features)
    model.reset_classifier(0)
    assert model(x).shape == (1, model.num_features)


def test_no_weight_decay_names_exist():
    model = timm.create_model('sgformer_nano')
    names = dict(model.named_parameters())
    assert model.no_weight_decay() == {'pos_embed'}
    assert all(n in names for n in model.no_weight_decay())


def test_group_matcher_covers_all_parameters():
    model = timm.create_model('sgformer_nano')
    groups = timm.models.group_parameters(model, model.group_matcher(coarse=False))
    grouped = {n for names in groups.values() for n in names}
    assert grouped == {n for n, _ in model.named_parameters()}


def test_create_model_kwargs():
    model = timm.create_model('sgformer_tiny', num_classes=7, drop_path_rate=0.1, img_size=96)
    assert model.pos_embed.shape == (1, 24 * 24, 32)
    assert model(torch.randn(1, 3, 96, 96)).shape == (1, 7)
    assert {'sgformer_s', 'sgformer_m', 'sgformer_b', 'sgformer_tiny', 'sgformer_nano'} <= set(timm.list_models('sgformer_*'))


def test_pos_embed_resampled_for_new_img_size():
    fixture = load_fixture('official_sgformer_tiny.pt')
    config = dict(fixture['config'], img_size=256)
    model = SGFormer(**config)
    state = checkpoint_filter_fn(fixture['state_dict'], model)
    assert state['pos_embed'].shape == (1, 64 * 64, 16)
    model.load_state_dict(state, strict=True)


def test_significance_maps_and_bands():
    model = timm.create_model('sgformer_nano').eval()
    maps = model.significance_maps(torch.randn(2, 3, 96, 128))
    assert list(maps) == ['stages.0.blocks.1', 'stages.1.blocks.1', 'stages.2.blocks.1']
    for (name, sig), sr, stride in zip(maps.items(), (8, 4, 2), (4, 8, 16)):
        assert sig.shape == (2, 96 // stride, 128 // stride)
        bands = band_index(sig, sr)
        counts = torch.bincount(bands[0].flatten(), minlength=len(SG_BANDS[sr][0]))
        assert counts.tolist() == [L for L, _, _ in band_layout(sig[0].numel(), sr)]
        # the most significant token sits in the last band, the least in the first
        flat = sig[0].flatten()
        assert bands[0].flatten()[flat.argmax()] == len(counts) - 1
        assert bands[0].flatten()[flat.argmin()] == 0


def test_meta_device_build_then_init():
    model = timm.create_model('sgformer_nano', device='meta')
    model.to_empty(device='cpu')
    model.init_weights()
    torch.testing.assert_close(model.pos_embed.detach(), sincos_pos_embed(16, (56, 56)))
    assert torch.isfinite(model(torch.randn(1, 3, 64, 64))).all()


# --- compile and mixed precision ----------------------------------------------------------------

@pytest.mark.slow
def test_dynamo_one_graph_per_resolution():
    """The documented recipe (dynamic=False, batch dim marked dynamic) traces the whole model
    (fullgraph: no graph breaks) once per resolution: batch sizes and switching back and forth
    between resolutions compile nothing new."""
    from torch._dynamo.testing import CompileCounter
    torch._dynamo.reset()
    model = timm.create_model('sgformer_nano', num_classes=4).eval()
    counter = CompileCounter()
    compiled = torch.compile(model, backend=counter, fullgraph=True, dynamic=False)
    with torch.no_grad():
        for batch, h, w in [(2, 64, 96), (3, 64, 96), (2, 96, 96), (5, 64, 96), (4, 96, 96)]:
            x = torch.randn(batch, 3, h, w)
            torch._dynamo.mark_dynamic(x, 0)
            torch.testing.assert_close(compiled(x), model(x))
    assert counter.frame_count == 2
    torch._dynamo.reset()


def test_bf16_autocast_forward_backward():
    model = timm.create_model('sgformer_nano', num_classes=4).train()
    x = torch.randn(2, 3, 64, 64)
    with torch.autocast('cpu', dtype=torch.bfloat16):
        logits = model(x)
        maps = model.significance_maps(x)
    assert logits.dtype == torch.bfloat16
    assert all(m.dtype == torch.float32 for m in maps.values())  # sorted in float32: no bf16 ties
    logits.float().sum().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())
