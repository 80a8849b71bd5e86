"""SG-Former against the timm model contract, tested the way timm's `tests/test_models.py` tests
its own models (default cfgs, backward, features_only, forward_intermediates, FX), sized for CPU."""
import math
from pathlib import Path

import pytest
import timm
import torch
from timm.layers import get_channel_dim, get_spatial_dim
from timm.models import FeatureInfo, get_notrace_functions, get_notrace_modules
from timm.models._features import feature_take_indices
from torchvision.models.feature_extraction import NodePathTracer, create_feature_extractor, get_graph_node_names

import sgformer.models  # noqa: F401  (registers the sgformer_* models with timm)
from sgformer.models import sgformer as sg

FIXTURES = Path(__file__).resolve().parents[1] / 'fixtures'
VARIANTS = timm.list_models('sgformer_*')
SMALL_VARIANTS = ['sgformer_nano', 'sgformer_tiny']
LARGE_VARIANTS = [v for v in VARIANTS if v not in SMALL_VARIANTS]
NUM_PARAMS = {  # at 1000 classes
    'sgformer_nano': 645_585, 'sgformer_tiny': 2_675_670,
    'sgformer_s': 22_545_981, 'sgformer_m': 38_689_316, 'sgformer_b': 77_950_293,
}
TARGET_FFEAT_SIZE = (96, 128)  # timm's features test target is 96; both sides multiples of 32
FX_TRACER_KWARGS = dict(  # as timm's `_create_fx_model`
    leaf_modules=get_notrace_modules(),
    autowrap_functions=get_notrace_functions(),
    param_shapes_constant=True,
)


def _check_features(outputs, feature_info: FeatureInfo, input_size, output_fmt='NCHW', batch_size=1):
    """timm's features test: one map per out index, channels and reductions as feature_info says."""
    feat_axis, spatial_axis = get_channel_dim(output_fmt), get_spatial_dim(output_fmt)
    channels, reductions = feature_info.channels(), feature_info.reduction()
    assert len(outputs) == len(channels)
    for c, r, o in zip(channels, reductions, outputs):
        assert o.shape[0] == batch_size
        assert o.shape[feat_axis] == c
        assert o.shape[spatial_axis[0]] == math.ceil(input_size[0] / r)
        assert o.shape[spatial_axis[1]] == math.ceil(input_size[1] / r)
        assert torch.isfinite(o).all()


def _same_weights(target: torch.nn.Module, source: torch.nn.Module) -> None:
    """Copy `source`'s weights into `target`, which holds a subset of them (a pruned model)."""
    wanted = target.state_dict()
    target.load_state_dict({k: v for k, v in source.state_dict().items() if k in wanted}, strict=True)


# --- registry and default cfgs -------------------------------------------------------------------

def test_registry():
    assert set(SMALL_VARIANTS + ['sgformer_s', 'sgformer_m', 'sgformer_b']) == set(VARIANTS)
    tags = timm.list_models('sgformer_*', include_tags=True)
    assert set(tags) == {
        'sgformer_nano.untrained', 'sgformer_tiny.untrained', 'sgformer_s.in1k', 'sgformer_m.in1k', 'sgformer_b.in1k'}
    assert timm.list_pretrained('sgformer_*') == []  # no weights are hosted: official ones load from a file


@pytest.mark.parametrize('variant', VARIANTS)
def test_default_cfg_and_feature_info(variant):
    model = timm.create_model(variant, device='meta')
    cfg = model.pretrained_cfg
    assert not cfg.get('hf_hub_id') and not cfg.get('url')
    assert cfg['paper_ids'] == 'arXiv:2308.12216'
    assert cfg['origin_url'] == 'https://github.com/OliverRensu/SG-Former'
    assert cfg['paper_name'].startswith('SG-Former')
    assert cfg['num_classes'] == model.num_classes == 1000
    assert cfg['input_size'] == (3, 224, 224) and not cfg['fixed_input_size']
    assert cfg['pool_size'] == (224 // 32, 224 // 32)
    assert cfg['crop_pct'] == 0.9 and cfg['interpolation'] == 'bicubic'
    assert cfg['mean'] == timm.data.IMAGENET_DEFAULT_MEAN and cfg['std'] == timm.data.IMAGENET_DEFAULT_STD
    state_dict = model.state_dict()
    assert cfg['first_conv'] + '.weight' in state_dict
    assert cfg['classifier'] + '.weight' in state_dict
    assert state_dict[cfg['first_conv'] + '.weight'].shape[1] == 3
    assert sum(p.numel() for p in model.parameters()) == NUM_PARAMS[variant]

    assert model.output_fmt == 'NHWC'
    assert model.num_features == model.head_hidden_size == model.embed_dims[-1]
    modules = dict(model.named_modules())
    assert [f['module'] for f in model.feature_info] == ['stages.0', 'stages.1', 'stages.2', 'stages.3']
    assert [f['reduction'] for f in model.feature_info] == [4, 8, 16, 32]
    assert [f['num_chs'] for f in model.feature_info] == list(model.embed_dims)
    assert all(f['module'] in modules for f in model.feature_info)
    assert not hasattr(model, 'grad_checkpointing')  # the stages hold the flag


@pytest.mark.parametrize('variant', SMALL_VARIANTS)
def test_model_default_cfgs(variant):
    """timm's `test_model_default_cfgs` at the default 224: NHWC unpooled features of pool_size,
    pre_logits == classifier-less forward, and pooling / classifier removal via reset and __init__."""
    model = timm.create_model(variant).eval()
    cfg = model.pretrained_cfg
    spatial_axis, feat_axis = get_spatial_dim(model.output_fmt), get_channel_dim(model.output_fmt)
    x = torch.randn(1, *cfg['input_size'])
    with torch.no_grad():
        features = model.forward_features(x)
        pre_logits = model.forward_head(features, pre_logits=True)
        assert tuple(features.shape[a] for a in spatial_axis) == cfg['pool_size']
        assert features.shape[feat_axis] == model.num_features
        assert pre_logits.shape == (1, model.head_hidden_size)

        model.reset_classifier(0)
        assert model.num_classes == 0
        torch.testing.assert_close(model(x), pre_logits, rtol=0, atol=0)
        model.reset_classifier(0, '')
        out = model(x)
        assert out.ndim == 4 and tuple(out.shape[a] for a in spatial_axis) == cfg['pool_size']

        model = timm.create_model(variant, num_classes=0, global_pool='').eval()
        out = model(x)
        assert out.ndim == 4 and tuple(out.shape[a] for a in spatial_axis) == cfg['pool_size']


@pytest.mark.parametrize('variant', SMALL_VARIANTS)
def test_model_backward(variant):
    """timm's `test_model_backward`: batch 2 at 128, every parameter gets a gradient."""
    model = timm.create_model(variant, num_classes=42).train()
    outputs = model(torch.randn(2, 3, 128, 128))
    outputs.mean().backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None]
    assert not missing, missing
    assert outputs.shape == (2, 42) and not torch.isnan(outputs).any()


# --- features_only -------------------------------------------------------------------------------

OUT_INDICES = [None, (1, 2, 3), (0, -1), (-2,), 2]


@pytest.mark.parametrize('variant', SMALL_VARIANTS)
@pytest.mark.parametrize('out_indices', OUT_INDICES, ids=str)
def test_features_only(variant, out_indices):
    """NCHW maps with the channels / reductions of feature_info, equal to the unwrapped model's
    `forward_intermediates` (and the last one to `forward_features`)."""
    kwargs = {} if out_indices is None else dict(out_indices=out_indices)
    model = timm.create_model(variant, features_only=True, **kwargs).eval()
    reference = timm.create_model(variant).eval()
    _same_weights(model.model, reference)
    indices = (0, 1, 2, 3) if out_indices is None else out_indices
    expected_indices = feature_take_indices(4, indices)[0]
    assert list(model.feature_info.out_indices) == expected_indices
    assert model.feature_info.module_name() == [f'stages.{i}' for i in expected_indices]
    assert model.feature_info.reduction() == [4 * 2 ** i for i in expected_indices]
    assert model.feature_info.channels() == [reference.embed_dims[i] for i in expected_indices]
    assert len(model.model.stages) == max(expected_indices) + 1  # pruned after the last stage taken
    assert getattr(model, 'output_fmt', 'NCHW') == 'NCHW'

    x = torch.randn(1, 3, *TARGET_FFEAT_SIZE)
    with torch.no_grad():
        outputs = model(x)
        _check_features(outputs, model.feature_info, TARGET_FFEAT_SIZE, 'NCHW')
        expected = reference.forward_intermediates(x, indices=indices, intermediates_only=True)
        for o, e in zip(outputs, expected):
            torch.testing.assert_close(o, e, rtol=0, atol=0)
        if 3 in expected_indices:
            torch.testing.assert_close(outputs[-1], reference.forward_features(x).permute(0, 3, 1, 2), rtol=0, atol=0)


@pytest.mark.parametrize('variant', LARGE_VARIANTS)
def test_features_only_large_variants(variant):
    model = timm.create_model(variant, features_only=True, out_indices=(1, 2, 3)).eval()
    assert model.feature_info.reduction() == [8, 16, 32]
    with torch.no_grad():
        outputs = model(torch.randn(1, 3, 64, 64))
    _check_features(outputs, model.feature_info, (64, 64), 'NCHW')


@pytest.mark.parametrize('feature_cls', ['hook', 'fx'])
def test_features_only_hook_and_fx(feature_cls):
    """The hook and FX wrappers return the stages' own NHWC maps (their `output_fmt`), as for Swin."""
    model = timm.create_model('sgformer_nano', features_only=True, feature_cls=feature_cls, out_indices=(1, -1)).eval()
    reference = timm.create_model('sgformer_nano').eval()
    _same_weights(model.graph_module if feature_cls == 'fx' else model.body, reference)
    assert model.output_fmt == 'NHWC'
    assert model.feature_info.module_name() == ['stages.1', 'stages.3']
    x = torch.randn(1, 3, *TARGET_FFEAT_SIZE)
    with torch.no_grad():
        outputs = model(x)
        _check_features(outputs, model.feature_info, TARGET_FFEAT_SIZE, 'NHWC')
        expected = reference.forward_intermediates(x, indices=(1, -1), output_fmt='NHWC', intermediates_only=True)
    for o, e in zip(outputs, expected):
        torch.testing.assert_close(o, e, rtol=0, atol=0)


@pytest.mark.parametrize('feature_cls', ['list', 'dict', timm.models.FeatureListNet])
def test_features_only_module_rewrite_refused(feature_cls):
    """FeatureListNet / FeatureDictNet rebuild the net from child modules and would skip pos_embed."""
    with pytest.raises(ValueError, match='pos_embed'):
        timm.create_model('sgformer_nano', features_only=True, feature_cls=feature_cls)


def test_features_only_pretrained_file(tmp_path):
    """timm's `test_model_features_pretrained`, from an official state dict file: the features of
    the official weights, the classifier dropped."""
    fixture = torch.load(FIXTURES / 'official_sgformer_tiny.pt', weights_only=True)
    reference = sg.SGFormer(**fixture['config'])
    reference.load_state_dict(sg.checkpoint_filter_fn(fixture['state_dict'], reference), strict=True)
    path = tmp_path / 'official.pth'
    torch.save(fixture['state_dict'], path)
    config = {k: v for k, v in fixture['config'].items() if k != 'norm_layer'}
    model = timm.create_model('sgformer_nano', pretrained=True, features_only=True, out_indices=(1, 2, 3), **config,
                              pretrained_cfg_overlay=dict(file=str(path), num_classes=config['num_classes']))
    assert 'classifier' not in model.pretrained_cfg and model.pretrained_cfg['crop_pct'] == 0.9
    x = fixture['input']
    with torch.no_grad():
        outputs = model.eval()(x)
        expected = reference.eval().forward_intermediates(x, indices=(1, 2, 3), intermediates_only=True)
    for o, e in zip(outputs, expected):
        torch.testing.assert_close(o, e, rtol=0, atol=0)


# --- forward_intermediates / prune_intermediate_layers -------------------------------------------

@pytest.mark.parametrize('variant', SMALL_VARIANTS)
def test_forward_intermediates(variant):
    """timm's `test_model_forward_intermediates`, plus the index / format / early-stop options."""
    model = timm.create_model(variant).eval()
    feature_info = FeatureInfo(model.feature_info, len(model.feature_info))
    x = torch.randn(1, 3, *TARGET_FFEAT_SIZE)
    with torch.no_grad():
        final, intermediates = model.forward_intermediates(x, output_fmt='NCHW')
        _check_features(intermediates, feature_info, TARGET_FFEAT_SIZE, 'NCHW')
        torch.testing.assert_close(final, model.forward_features(x), rtol=0, atol=0)
        torch.testing.assert_close(intermediates[-1], final.permute(0, 3, 1, 2), rtol=0, atol=0)

        nhwc = model.forward_intermediates(x, output_fmt='NHWC', intermediates_only=True)
        for a, b in zip(intermediates, nhwc):
            torch.testing.assert_close(a, b.permute(0, 3, 1, 2), rtol=0, atol=0)
        # norm= changes nothing: every stage output is already normed by the stage's own norm
        normed = model.forward_intermediates(x, norm=True, intermediates_only=True)
        for a, b in zip(intermediates, normed):
            torch.testing.assert_close(a, b, rtol=0, atol=0)
        # int = last n, negative indices count from the end
        last2 = model.forward_intermediates(x, indices=2, intermediates_only=True)
        picked = model.forward_intermediates(x, indices=[0, -2], intermediates_only=True)
        for a, b in zip(last2 + picked, intermediates[2:] + [intermediates[0], intermediates[2]]):
            torch.testing.assert_close(a, b, rtol=0, atol=0)
        # stop_early: the returned features are those of the last stage taken
        early, early_inter = model.forward_intermediates(x, indices=[1], stop_early=True)
        torch.testing.assert_close(early.permute(0, 3, 1, 2), intermediates[1], rtol=0, atol=0)
        torch.testing.assert_close(early_inter[0], intermediates[1], rtol=0, atol=0)
        with pytest.raises(AssertionError):
            model.forward_intermediates(x, indices=[4])
        with pytest.raises(AssertionError):
            model.forward_intermediates(x, output_fmt='NLC')

        model.set_grad_checkpointing()
        assert all(stage.grad_checkpointing for stage in model.stages)
        final_ckpt, _ = model.forward_intermediates(x)
        torch.testing.assert_close(final_ckpt, final, rtol=1e-4, atol=1e-5)


def test_prune_intermediate_layers():
    model = timm.create_model('sgformer_nano').eval()
    x = torch.randn(1, 3, *TARGET_FFEAT_SIZE)
    with torch.no_grad():
        expected = model.forward_intermediates(x, intermediates_only=True)
        assert model.prune_intermediate_layers(indices=(0, -3), prune_head=False) == [0, 1]
        assert len(model.stages) == 2
        assert model.num_features == model.head_hidden_size == model.feature_info[1]['num_chs']
        assert isinstance(model.head, torch.nn.Identity) and model.num_classes == 0  # pruning the end drops the head
        final, intermediates = model.forward_intermediates(x, indices=(0, 1))
        for a, b in zip(intermediates, expected[:2]):
            torch.testing.assert_close(a, b, rtol=0, atol=0)
        torch.testing.assert_close(model(x), final, rtol=0, atol=0)  # no pooling, no classifier: NHWC stage 1

    model = timm.create_model('sgformer_nano')
    assert model.prune_intermediate_layers(indices=4, prune_head=False) == [0, 1, 2, 3]
    assert len(model.stages) == 4 and model.num_classes == 1000  # nothing to prune
    model.prune_intermediate_layers(indices=1)
    assert len(model.stages) == 4 and model.num_classes == 0 and model.global_pool == ''


# --- FX ------------------------------------------------------------------------------------------

def _create_fx_model(model: torch.nn.Module, train: bool = False) -> torch.nn.Module:
    """timm's `_create_fx_model`: the whole model through torchvision's feature extractor."""
    train_nodes, eval_nodes = get_graph_node_names(model, tracer_kwargs=FX_TRACER_KWARGS)
    train_return_nodes, eval_return_nodes = [train_nodes[-1]], [eval_nodes[-1]]
    if train:
        graph = NodePathTracer(**FX_TRACER_KWARGS).trace(model)
        graph_nodes = list(reversed(graph.nodes))
        output_node_names = [n.name for n in graph_nodes[0]._input_nodes.keys()]
        graph_node_names = [n.name for n in graph_nodes]
        train_return_nodes = [train_nodes[-graph_node_names.index(name)] for name in output_node_names]
    return create_feature_extractor(
        model, train_return_nodes=train_return_nodes, eval_return_nodes=eval_return_nodes,
        tracer_kwargs=FX_TRACER_KWARGS)


def test_notrace_functions_registered():
    names = {getattr(f, '__name__', f) for f in get_notrace_functions()}
    assert {'add_pos_embed', 'pad_to_windows', 'attention_received', 'merge_bands', 'dwconv_residual_weight'} <= names


@pytest.mark.filterwarnings('ignore:NOTE. The nodes obtained by tracing')
@pytest.mark.parametrize('variant', SMALL_VARIANTS)
def test_model_forward_fx(variant):
    """timm's `test_model_forward_fx`: one traced graph, equal to the model at every input size
    (224: exact bands; 96x160: padded windows, resampled bands and pos_embed)."""
    model = timm.create_model(variant).eval()
    with torch.inference_mode():
        fx_model = _create_fx_model(model)
        for size in [(128, 128), (96, 160), (224, 224)]:
            x = torch.randn(1, 3, *size)
            outputs = model(x)
            fx_outputs = torch.cat(tuple(fx_model(x).values()))
            assert torch.equal(fx_outputs, outputs), size


@pytest.mark.filterwarnings('ignore:NOTE. The nodes obtained by tracing')
def test_model_backward_fx():
    """timm's `test_model_backward_fx` (with stochastic depth on, so its train graph is traced)."""
    model = timm.create_model('sgformer_nano', num_classes=42, drop_path_rate=0.1).train()
    num_params = sum(p.numel() for p in model.parameters())
    fx_model = _create_fx_model(model, train=True)
    outputs = torch.cat(tuple(fx_model(torch.randn(2, 3, 128, 128)).values()))
    outputs.mean().backward()
    missing = [n for n, p in fx_model.named_parameters() if p.grad is None]
    assert not missing, missing
    assert sum(p.grad.numel() for p in fx_model.parameters()) == num_params
    assert outputs.shape == (2, 42) and not torch.isnan(outputs).any()


@pytest.mark.filterwarnings('ignore:NOTE. The nodes obtained by tracing')
def test_create_feature_extractor_stage_nodes():
    """`timm.models.create_feature_extractor` with the feature_info module names as return nodes."""
    model = timm.create_model('sgformer_tiny').eval()
    return_nodes = {f['module']: f'C{i + 2}' for i, f in enumerate(model.feature_info)}
    extractor = timm.models.create_feature_extractor(model, return_nodes=return_nodes)
    x = torch.randn(2, 3, 96, 160)
    with torch.no_grad():
        out = extractor(x)
        expected = model.forward_intermediates(x, output_fmt='NHWC', intermediates_only=True)
    assert list(out) == ['C2', 'C3', 'C4', 'C5']
    for o, e in zip(out.values(), expected):
        torch.testing.assert_close(o, e, rtol=0, atol=0)
