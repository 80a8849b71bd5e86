"""Batched RandAugment against timm: its sampling distribution, every op against timm's PIL op, a fixed op count."""
import math
import random
from collections import Counter
from functools import lru_cache

import numpy as np
import pytest
import torch
from PIL import Image
from timm.data import auto_augment as aa

from conftest import CountOps
from sgformer.augment import rand_augment as ra
from sgformer.augment.rand_augment import FILL, BatchRandAugment, apply_op, vector_level_fn
from sgformer.datasets.sample import draw_image

DRAWS = 20_000  # images per sampling comparison: about 1,300 applied draws per op
INC, PLAIN, WEIGHTED = 'rand-m9-mstd0.5-inc1', 'rand-m9-mstd0.5', 'rand-m9-mstd0.5-t3aw'
GEOMETRIC_FNS = (aa.rotate, aa.shear_x, aa.shear_y, aa.translate_x_rel, aa.translate_y_rel, aa.translate_x_abs,
                 aa.translate_y_abs)
PIL_FILTERS = {'bilinear': Image.Resampling.BILINEAR, 'bicubic': Image.Resampling.BICUBIC}


# --- the reference: timm's own sampling, PIL ops replaced by recorders -------------------------------------------

@lru_cache
def timm_draws(spec: str, n: int = DRAWS, seed: int = 0) -> dict[str, np.ndarray]:
    """Run timm's RandAugment.__call__ / AugmentOp.__call__ on `n` tiny images, recording instead of PIL ops.

    Returns:
        `n x num_layers` arrays: `name` (the op np.random.choice picked), `applied`, `arg` (nan: none) and
        `filter` (the interpolation timm's geometric ops pick, else '').
    """
    policy = aa.rand_augment_transform(spec, dict(img_mean=FILL))
    log = []

    def recorder(geometric: bool):
        def record(img, *args, **kwargs):
            picked = str(aa._interpolation(dict(kwargs))) if geometric else ''  # as _check_args_tf does
            log[-1][1:] = [True, args[0] if args else math.nan, picked]
            return img
        return record

    class Picked:  # stands in timm's op list: logs np.random.choice's pick, then runs timm's AugmentOp
        def __init__(self, op):
            self.op = op

        def __call__(self, img):
            log.append([self.op.name, False, math.nan, ''])
            return self.op(img)

    for op in policy.ops:
        op.aug_fn = recorder(op.aug_fn in GEOMETRIC_FNS)
    policy.ops = [Picked(op) for op in policy.ops]
    random.seed(seed)
    np.random.seed(seed)
    image = Image.new('RGB', (4, 4))
    for _ in range(n):
        policy(image)
    names, applied, args, filters = zip(*log)
    shape = (n, policy.num_layers)
    return dict(name=np.array(names).reshape(shape), applied=np.array(applied).reshape(shape),
                arg=np.array(args, dtype=float).reshape(shape), filter=np.array(filters).reshape(shape))


def our_draws(aug: BatchRandAugment, n: int = DRAWS, seed: int = 0) -> dict[str, np.ndarray]:
    """The same arrays from `BatchRandAugment.sample` (the sampler alone, no image)."""
    torch.manual_seed(seed)
    plan = aug.sample(n)
    op, applied = plan.op.numpy(), plan.applied.numpy()
    has_arg = np.array([o.level_fn is not None for o in aug.policy.ops])[op]
    filters = [[str(f) if o.aug_fn in GEOMETRIC_FNS else '' for f in o.kwargs['resample']] for o in aug.policy.ops]
    picked = np.array(filters)[op, plan.interpolation.numpy()]  # timm's default: (BILINEAR, BICUBIC) for all
    return dict(name=np.array([o.name for o in aug.policy.ops])[op], applied=applied,
                arg=np.where(applied & has_arg, plan.arg.numpy(), math.nan), filter=np.where(applied, picked, ''))


# --- two-sample tests at p = 1e-6 (stable), with the power to see a wrong prob, num_layers, mstd or sign -------

def chi2_quantile(df: int, z: float = 4.75) -> float:
    """Wilson-Hilferty approximation of the chi-square quantile at the normal quantile `z` (4.75: 1 - 1e-6)."""
    return df * (1 - 2 / (9 * df) + z * math.sqrt(2 / (9 * df))) ** 3


def assert_same_counts(a, b, what: str) -> None:
    """Chi-square homogeneity test of two samples of a categorical variable."""
    ca, cb = Counter(a), Counter(b)
    keys = sorted(set(ca) | set(cb), key=str)
    table = np.array([[ca[k] for k in keys], [cb[k] for k in keys]], dtype=float)
    expected = table.sum(1, keepdims=True) * table.sum(0, keepdims=True) / table.sum()
    stat, df = ((table - expected) ** 2 / expected).sum(), len(keys) - 1
    assert df == 0 or stat < chi2_quantile(df), f'{what}: chi2 {stat:.1f} > {chi2_quantile(df):.1f} ({df} df)'


def assert_same_values(a: np.ndarray, b: np.ndarray, what: str) -> None:
    """Two-sample Kolmogorov-Smirnov test of a real variable."""
    points = np.concatenate([a, b])
    cdf_a = np.searchsorted(np.sort(a), points, side='right') / len(a)
    cdf_b = np.searchsorted(np.sort(b), points, side='right') / len(b)
    distance = np.abs(cdf_a - cdf_b).max()
    bound = math.sqrt(-math.log(1e-6 / 2) / 2 * (len(a) + len(b)) / (len(a) * len(b)))
    assert distance < bound, f'{what}: KS distance {distance:.3f} > {bound:.3f}'


def assert_same_distribution(ref: dict, ours: dict) -> None:
    assert ref['name'].shape == ours['name'].shape, 'images x num_layers'
    for layer in range(ref['name'].shape[1]):
        assert_same_counts(ref['name'][:, layer], ours['name'][:, layer], f'op of layer {layer}')
        assert_same_counts(zip(ref['name'][:, layer], ref['applied'][:, layer]),
                           zip(ours['name'][:, layer], ours['applied'][:, layer]), f'op applied, layer {layer}')
    if ref['name'].shape[1] > 1:
        assert_same_counts(ref['name'][:, 0] == ref['name'][:, 1], ours['name'][:, 0] == ours['name'][:, 1],
                           'same op in layers 0 and 1')
    assert_same_counts(zip(ref['name'].ravel(), ref['filter'].ravel()),
                       zip(ours['name'].ravel(), ours['filter'].ravel()), 'op and interpolation')
    for name in np.unique(ref['name']):
        a = ref['arg'][(ref['name'] == name) & ~np.isnan(ref['arg'])]
        b = ours['arg'][(ours['name'] == name) & ~np.isnan(ours['arg'])]
        if len(a):
            assert len(b), name
            assert_same_values(np.abs(a), np.abs(b), f'{name} |argument|')
            assert_same_counts(np.sign(a), np.sign(b), f'{name} sign')


@pytest.mark.parametrize('spec', [INC, PLAIN, WEIGHTED])
def test_sampling_matches_timm(spec):
    ref, ours = timm_draws(spec), our_draws(BatchRandAugment(spec))
    assert_same_distribution(ref, ours)
    # the magnitude of one op, by its moments: Rotate's |degrees| = 3 x magnitude (N(9, 0.5) clipped to 10)
    a = np.abs(ref['arg'][(ref['name'] == 'Rotate') & ref['applied']])
    b = np.abs(ours['arg'][(ours['name'] == 'Rotate') & ours['applied']])
    assert abs(a.mean() - b.mean()) < 5 * math.sqrt(a.var() / len(a) + b.var() / len(b))
    assert 0.9 < b.std() / a.std() < 1.1


@pytest.mark.parametrize('wrong', ['prob', 'num_layers', 'mstd', 'no negation', 'not increasing', 'replacement',
                                   'one filter'])
def test_sampling_check_sees_a_wrong_sampler(wrong, monkeypatch):
    spec = {'prob': INC + '-p1.0', 'num_layers': INC + '-n3', 'mstd': 'rand-m9-mstd1.0-inc1', 'no negation': INC,
            'not increasing': PLAIN, 'replacement': WEIGHTED, 'one filter': INC}[wrong]
    aug = BatchRandAugment(spec)
    if wrong == 'no negation':
        monkeypatch.setattr(ra, '_negate', lambda value, flip: value)
    if wrong == 'replacement':
        aug.weights = None  # uniform choice with replacement instead of timm's weighted, without
    if wrong == 'one filter':
        aug.num_modes[:] = 1  # always the first of timm's (BILINEAR, BICUBIC)
    with pytest.raises(AssertionError):
        assert_same_distribution(timm_draws(WEIGHTED if wrong == 'replacement' else INC), our_draws(aug, seed=1))


@pytest.mark.parametrize('name', [n for n, fn in aa.LEVEL_TO_ARG.items() if fn is not None])
def test_level_functions_match_timm_bit_for_bit(name, monkeypatch):
    hparams = dict(img_mean=FILL, translate_const=250, translate_pct=0.45)
    magnitudes = np.concatenate([np.linspace(0, 30, 301), np.random.default_rng(0).uniform(0, 30, 200)])
    ours = vector_level_fn(aa.LEVEL_TO_ARG[name])
    for negate in (False, True):
        monkeypatch.setattr(aa.random, 'random', lambda: 1.0 if negate else 0.0)  # timm negates if random() > 0.5
        expected = [aa.LEVEL_TO_ARG[name](float(m), hparams)[0] for m in magnitudes]
        got = ours(torch.from_numpy(magnitudes), torch.full((len(magnitudes),), negate), hparams)
        np.testing.assert_array_equal(got.numpy(), np.array(expected, dtype=float), err_msg=f'{name} negate={negate}')


# --- every op against timm's PIL op --------------------------------------------------------------------------

@lru_cache
def pictures(n: int = 8, size: tuple[int, int] = (64, 64)) -> tuple[list[Image.Image], torch.Tensor]:
    """`n` drawn sample pictures resized to `size` (w, h), as PIL images and as a uint8 batch."""
    rng = np.random.default_rng(0)
    pics = [draw_image(k % 10, rng, 64, 160).resize(size, Image.Resampling.BILINEAR) for k in range(n)]
    return pics, torch.from_numpy(np.stack([np.asarray(p) for p in pics])).permute(0, 3, 1, 2).contiguous()


def pil_batch(pics, name: str, args, resample=Image.Resampling.BICUBIC) -> torch.Tensor:
    fn = aa.NAME_TO_OP[name]
    out = [fn(p, *([] if a is None else [a]), fillcolor=FILL, resample=resample) for p, a in zip(pics, args)]
    return torch.from_numpy(np.stack([np.asarray(o) for o in out])).permute(0, 3, 1, 2)


FACTORS = [0.0, 0.1, 0.37, 0.9, 1.0, 1.3, 1.9, 2.5]  # blends: interpolation and extrapolation (clipped)
EXACT = {
    'AutoContrast': [None] * 8, 'Equalize': [None] * 8, 'Invert': [None] * 8,
    'Posterize': [1, 2, 3, 4, 5, 6, 7, 8], 'Solarize': [0, 1, 64, 128, 200, 255, 256, 100],
    'SolarizeAdd': [0, 10, 50, 110, 128, 5, 77, 99], 'Color': FACTORS, 'Contrast': FACTORS, 'Brightness': FACTORS,
    'Sharpness': FACTORS, 'Desaturate': [0.5, 0.6, 0.7, 0.8, 0.9, 1.0, 0.55, 0.75],
    'GaussianBlur': [0.1, 0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 1.234],
}
GEOMETRIC = {
    'Rotate': [-30, -12.3, -1, 0.5, 7, 15.5, 27, 30], 'ShearX': [-0.3, -0.2, -0.05, 0.01, 0.1, 0.15, 0.27, 0.3],
    'ShearY': [-0.3, -0.2, -0.05, 0.01, 0.1, 0.15, 0.27, 0.3],
    'TranslateXRel': [-0.45, -0.3, -0.1, -0.01, 0.05, 0.2, 0.33, 0.45],
    'TranslateYRel': [-0.45, -0.3, -0.1, -0.01, 0.05, 0.2, 0.33, 0.45],
    'TranslateX': [-20, -10.5, -3, 0, 1, 7.25, 15, 30], 'TranslateY': [-20, -10.5, -3, 0, 1, 7.25, 15, 30],
}


def args_tensor(args) -> torch.Tensor | None:
    return None if args[0] is None else torch.tensor(args, dtype=torch.float64)


@pytest.mark.parametrize('name', list(EXACT))
def test_point_filter_and_blur_ops_equal_pil_exactly(name):
    pics, batch = pictures()
    expected = pil_batch(pics, name, EXACT[name])
    torch.testing.assert_close(apply_op(batch, name, args_tensor(EXACT[name])), expected, rtol=0, atol=0)


def test_gaussian_blur_rand_draws_its_radius_like_timm():
    pics, batch = pictures()
    factor, u = torch.linspace(0.1, 1.0, 8, dtype=torch.float64), torch.linspace(0, 0.99, 8, dtype=torch.float64)
    radius = 0.1 + (2.0 * factor - 0.1) * u  # timm: random.uniform(0.1, 2.0 * factor)
    expected = pil_batch(pics, 'GaussianBlur', radius.tolist())
    torch.testing.assert_close(apply_op(batch, 'GaussianBlurRand', factor, aux=u), expected, rtol=0, atol=0)


def test_posterize_to_zero_bits_is_black():
    # timm's level functions reach 0 bits (PosterizeIncreasing at magnitude 10); the Pillow here raises for it
    _, batch = pictures()
    assert not apply_op(batch, 'PosterizeIncreasing', torch.zeros(8, dtype=torch.float64)).any()


@pytest.mark.parametrize('mode', ['bilinear', 'bicubic'])
@pytest.mark.parametrize('size', [(64, 64), (80, 48)])
@pytest.mark.parametrize('name', list(GEOMETRIC))
def test_geometric_ops_match_pil_closely(name, size, mode):
    pics, batch = pictures(size=size)
    expected = pil_batch(pics, name, GEOMETRIC[name], PIL_FILTERS[mode])
    diff = (apply_op(batch, name, args_tensor(GEOMETRIC[name]), interpolation=mode).int() - expected.int()).abs()
    if mode == 'bilinear':  # same filter; float32 vs PIL's double rounding flips a few truncations by one level
        assert diff.max() <= 1 and (diff > 0).float().mean() < 0.01
    else:  # torch's bicubic (a = -0.75) vs PIL's (a = -1): at most 0.4 grey levels on average seen
        assert diff.float().mean() < 0.75


def test_each_image_gets_its_own_magnitude():
    pics, batch = pictures()
    same = batch[:1].expand(8, -1, -1, -1).contiguous()
    degrees = GEOMETRIC['Rotate']
    out = apply_op(same, 'Rotate', torch.tensor(degrees, dtype=torch.float64), interpolation='bilinear')
    assert len({o.numpy().tobytes() for o in out}) == 8
    expected = pil_batch([pics[0]] * 8, 'Rotate', degrees, Image.Resampling.BILINEAR)
    assert (out.int() - expected.int()).abs().max() <= 1


def pil_plan(aug: BatchRandAugment, pics: list[Image.Image], plan) -> torch.Tensor:
    """The plan applied with timm's PIL ops, one image and one layer at a time."""
    out = []
    for i, pic in enumerate(pics):
        for layer in range(plan.op.shape[1]):
            if not plan.applied[i, layer]:
                continue
            op = aug.policy.ops[int(plan.op[i, layer])]
            arg = float(plan.arg[i, layer])
            if op.level_fn is not None and isinstance(op.level_fn(5.0, op.hparams)[0], int):
                arg = int(arg)  # bits, thresholds: timm passes ints
            if op.name.startswith('Posterize') and arg <= 0:
                pic = Image.new('RGB', pic.size)  # see test_posterize_to_zero_bits_is_black
                continue
            kwargs = dict(op.kwargs)
            if isinstance(kwargs['resample'], (list, tuple)):
                kwargs['resample'] = kwargs['resample'][int(plan.interpolation[i, layer])]
            pic = op.aug_fn(pic, *([] if op.level_fn is None else [arg]), **kwargs)
        out.append(np.asarray(pic))
    return torch.from_numpy(np.stack(out)).permute(0, 3, 1, 2)


@pytest.mark.parametrize('spec', [INC, PLAIN, 'rand-m9-mstd0.5-n3-t3a'])
def test_a_sampled_plan_equals_timm_ops_in_order(spec):
    aug = BatchRandAugment(spec)
    pics, batch = pictures(n=32, size=(48, 48))
    torch.manual_seed(0)
    plan = aug.sample(len(batch))
    diff = (aug.apply(batch, plan).int() - pil_plan(aug, pics, plan).int()).abs().flatten(1)
    affine = {'Rotate', 'ShearX', 'ShearY', 'TranslateXRel', 'TranslateYRel'}
    warped = torch.tensor([any(aug.policy.ops[int(o)].name in affine for o in plan.op[i][plan.applied[i]])
                           for i in range(len(batch))])
    assert 0 < warped.sum() < len(batch) or spec.endswith('t3a')
    assert not diff[~warped].any()  # every point, blend, filter and blur op bit-exact, in the plan's order
    if warped.any():
        assert diff[warped].float().mean() < 1.0  # affine filters (see test_geometric_ops_match_pil_closely)


# --- cost: no per-image work, no device read-back ------------------------------------------------------------

@pytest.mark.parametrize('spec', [INC, PLAIN, WEIGHTED])
def test_op_count_does_not_grow_with_the_batch(spec):
    aug, counts = BatchRandAugment(spec), {}
    for batch in (1, 8, 64):
        images = torch.randint(0, 256, (batch, 3, 16, 16), dtype=torch.uint8)
        torch.manual_seed(0)
        with CountOps() as ops:
            aug(images)
        counts[batch] = ops.count
    assert counts[64] <= counts[8] <= counts[1], counts


def test_nothing_is_read_back_from_the_device():
    # on the meta device any op that needs the values on the host (a sync on CUDA) raises
    out = BatchRandAugment(WEIGHTED)(torch.empty(8, 3, 32, 32, dtype=torch.uint8, device='meta'))
    assert out.device.type == 'meta' and out.shape == (8, 3, 32, 32) and out.dtype == torch.uint8


# --- seeding and interface -----------------------------------------------------------------------------------

def test_same_seed_same_output_other_seed_other_output():
    _, batch = pictures(n=16)
    aug = BatchRandAugment(PLAIN)
    outs = []
    for seed in (3, 3, 4):
        torch.manual_seed(seed)
        outs.append(aug(batch))
    assert torch.equal(outs[0], outs[1]) and not torch.equal(outs[0], outs[2])
    assert outs[0].dtype == torch.uint8 and outs[0].shape == batch.shape and outs[0].device == batch.device
    torch.manual_seed(3)
    assert torch.equal(aug(batch.contiguous(memory_format=torch.channels_last)), outs[0])


def test_only_torch_global_generator_is_used():
    _, batch = pictures()
    py, np_state = random.getstate(), np.random.get_state()
    torch.manual_seed(0)
    before = torch.rand(1)
    torch.manual_seed(0)
    BatchRandAugment(INC)(batch)
    assert random.getstate() == py and np.array_equal(np.random.get_state()[1], np_state[1])
    assert not torch.equal(torch.rand(1), before)


ALL_SETS = [f'rand-m9-mstd0.5-inc{inc}{t}' for inc in (0, 1) for t in ('', '-tweights', '-t3a', '-t3aw')]


@pytest.mark.parametrize('spec', ALL_SETS + ['rand-m7-n3-mstd0.5-inc1', 'rand-m9-mstd101', 'rand-m15-mmax20-n4-p0.9'])
def test_every_timm_spec_form_runs(spec):
    _, batch = pictures()
    torch.manual_seed(0)
    out = BatchRandAugment(spec)(batch)
    assert out.shape == batch.shape and out.dtype == torch.uint8 and not torch.equal(out, batch)


def test_unsupported_op_is_refused():
    with pytest.raises(ValueError, match='no tensor version of'):
        BatchRandAugment(INC, dict(img_mean=FILL, interpolation=Image.Resampling.LANCZOS))
