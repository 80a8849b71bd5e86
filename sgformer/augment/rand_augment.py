"""timm RandAugment on uint8 batches, on any device: timm's sampling distribution, PIL's arithmetic, no image loop.

timm parses the spec (`rand_augment_transform`) and owns the policy: the ops, `num_layers`, the choice weights
and, per op, `prob`, `magnitude`, `magnitude_std`, `magnitude_max`, `level_fn`, `hparams` and its PIL kwargs
(fill colour, interpolation choices). A call then has two steps:

1. `BatchRandAugment.sample` draws every decision of the batch on the host, from torch's global CPU generator,
   as a `Plan` of `B x num_layers` tensors: the op (`np.random.choice` semantics: uniform with replacement, or,
   with choice weights, weighted without replacement, i.e. successive draws among the ops left, which is what
   `torch.multinomial(replacement=False)` samples), whether it applies (timm's `random() > prob` skips it), the
   magnitude (`AugmentOp.__call__`: gauss, or uniform when mstd is inf, clipped to [0, mmax or 10]), the level
   argument (timm's level functions, vectorised, with their `_randomly_negate` coin per image) and the draws
   timm's PIL ops make inside (the interpolation, GaussianBlurRand's radius).
2. `BatchRandAugment.apply` runs the plan. Ops are grouped in families that share one batched kernel with
   per-image parameters:

   - table: Invert, Posterize*, Solarize*, SolarizeAdd, Brightness*: a 256-entry lookup table per image,
     built on the host from the arguments;
   - stat: AutoContrast, Equalize, Contrast*: per-image, per-channel tables built on the device from the
     images' histograms / grey mean;
   - color: Color*, Desaturate (blend with PIL's grey image); sharpness: Sharpness* (blend with PIL's SMOOTH);
   - affine: Rotate, ShearX/Y, TranslateX/Y(Rel): PIL's affine data per image (output -> input pixel), the
     sampling grid computed from it in float64 as PIL does, one `grid_sample` per interpolation mode (timm picks
     BILINEAR or BICUBIC per call: the plan draws it per image and each mode's images are warped together);
   - blur: GaussianBlur, GaussianBlurRand: PIL's three extended box-blur passes with a radius per image.

   For each layer, in order, each group gathers the images that drew (and passed the prob coin for) one of its
   ops with `index_select`, transforms them and scatters them back with `index_copy_`, on rows of 8-byte words
   (fast index kernels). An image takes one op per layer, so the groups of a layer are disjoint and their order
   does not matter.

Cost: the Python loops run over layers x groups (and the policy's ops while sampling), never over images, and
empty groups are not skipped, so the number of dispatched torch ops is fixed by the policy, whatever the batch
size (zero-sized ops are cheap). All per-call index and parameter tensors are built on the host, packed into one
pinned buffer per dtype and copied with `non_blocking=True` (4 copies a call); nothing on the device is read
back, so a call never waits for the GPU (the tests run `apply` on the meta device, where a read would fail).

Fidelity to timm's PIL ops: table, stat, color and sharpness ops redo PIL's integer / float32 arithmetic and
truncation and match it bit for bit; GaussianBlur redoes PIL's fixed-point box blur. The affine ops follow
PIL's conventions (the matrix maps output to input pixel centres, rotation about the centre, taps clamped to
the edge, points outside [0, W) x [0, H) take the fill colour, truncation) on torch's kernels: bilinear matches
up to float32 rounding; bicubic uses torch's cubic (a = -0.75) where PIL uses a = -1.
One deliberate difference: Posterize to 0 bits gives a black image (older Pillow, TF); the Pillow that timm
runs on here raises ValueError for 0 bits, which `rand-m9-mstd0.5-inc1` reaches whenever the magnitude clips
to 10.
"""
import math
from dataclasses import dataclass
from functools import partial

import torch
import torch.nn.functional as F
from PIL import Image
from timm.data import IMAGENET_DEFAULT_MEAN
from timm.data import auto_augment as aa

FILL = tuple(round(255 * m) for m in IMAGENET_DEFAULT_MEAN)  # timm's `img_mean` hparam: the affine fill colour

_GRID_MODES = {Image.Resampling.NEAREST: 'nearest', Image.Resampling.BILINEAR: 'bilinear',
               Image.Resampling.BICUBIC: 'bicubic'}
_TRUNC_EPS = 1e-3  # float32 grid_sample lands a hair below integers where PIL's double arithmetic is exact


# --- level functions: timm's LEVEL_TO_ARG, vectorised -------------------------------------------------------
# m: float64 magnitudes; flip: the `_randomly_negate` coin (timm negates when random() > 0.5); hp: op.hparams.
# Same float64 operations in the same order as timm, so the arguments are bit-identical for equal magnitudes.

def _negate(value: torch.Tensor, flip: torch.Tensor) -> torch.Tensor:
    return torch.where(flip, -value, value)


def _level(m: torch.Tensor) -> torch.Tensor:
    return m / aa._LEVEL_DENOM


def _minmax(m, flip, hp, min_val=0., max_val=1.0, clamp=True):
    value = min_val + (max_val - min_val) * _level(m)
    return value.clamp(min_val, max_val) if clamp else value


_LEVEL_FNS = {
    aa._rotate_level_to_arg: lambda m, flip, hp: _negate(_level(m) * 30., flip),
    aa._enhance_level_to_arg: lambda m, flip, hp: _level(m) * 1.8 + 0.1,
    aa._enhance_increasing_level_to_arg: lambda m, flip, hp: (1.0 + _negate(_level(m) * .9, flip)).clamp(min=0.1),
    aa._shear_level_to_arg: lambda m, flip, hp: _negate(_level(m) * 0.3, flip),
    aa._translate_abs_level_to_arg: lambda m, flip, hp: _negate(_level(m) * float(hp['translate_const']), flip),
    aa._translate_rel_level_to_arg: lambda m, flip, hp: _negate(_level(m) * hp.get('translate_pct', 0.45), flip),
    aa._posterize_level_to_arg: lambda m, flip, hp: (_level(m) * 4).trunc(),
    aa._posterize_increasing_level_to_arg: lambda m, flip, hp: 4 - (_level(m) * 4).trunc(),
    aa._posterize_original_level_to_arg: lambda m, flip, hp: (_level(m) * 4).trunc() + 4,
    aa._solarize_level_to_arg: lambda m, flip, hp: (_level(m) * 256).trunc().clamp(max=256),
    aa._solarize_increasing_level_to_arg: lambda m, flip, hp: 256 - (_level(m) * 256).trunc().clamp(max=256),
    aa._solarize_add_level_to_arg: lambda m, flip, hp: (_level(m) * 110).trunc().clamp(max=128),
    aa._minmax_level_to_arg: _minmax,
}


def vector_level_fn(level_fn):
    """The vectorised twin `f(magnitudes, flip, hparams) -> args` of a timm level function, or None if unknown."""
    if isinstance(level_fn, partial) and level_fn.func is aa._minmax_level_to_arg and not level_fn.args:
        return partial(_minmax, **level_fn.keywords)  # Desaturate, GaussianBlur: fixed min_val / max_val
    return _LEVEL_FNS.get(level_fn)


# --- PIL primitives on uint8 batches ------------------------------------------------------------------------

def _blend(degenerate: torch.Tensor, image: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """PIL's `Image.blend(degenerate, image, factor)`: float32 `d + f * (i - d)`, clipped, truncated to uint8."""
    d = degenerate.float()
    out = d + factor * (image.float() - d)  # two roundings, as PIL's C (no fused multiply-add)
    return out.clamp_(0, 255).to(torch.uint8)  # float -> uint8 truncates, like PIL's (UINT8) cast


def _grayscale(images: torch.Tensor) -> torch.Tensor:
    """PIL's RGB -> L: `(19595 R + 38470 G + 7471 B + 0x8000) >> 16`, as int32 `G, 1, H, W`."""
    r, g, b = images.int().unbind(1)
    return ((r * 19595 + g * 38470 + b * 7471 + 0x8000) >> 16).unsqueeze(1)


def _apply_lut(images: torch.Tensor, lut: torch.Tensor) -> torch.Tensor:
    """`out[g, c, y, x] = lut[g, c, images[g, c, y, x]]` for uint8 tables `G, 3, 256`."""
    g, c, h, w = images.shape
    return lut.gather(2, images.reshape(g, c, h * w).long()).view(images.shape)


def _histograms(images: torch.Tensor) -> torch.Tensor:
    """Per image and channel counts of the 256 levels, int64 `G, 3, 256` (integer atomics: deterministic)."""
    g, c, h, w = images.shape
    values = images.reshape(g, c, h * w).long()
    counts = torch.zeros(g, c, 256, dtype=torch.long, device=images.device)
    return counts.scatter_add_(2, values, values.new_ones(()).expand_as(values))


def _autocontrast_lut(hist: torch.Tensor) -> torch.Tensor:
    """`ImageOps.autocontrast` (cutoff 0): stretch [lowest, highest] used level to [0, 255], float64 like PIL."""
    levels = torch.arange(256, dtype=torch.float64, device=hist.device)
    used = hist > 0
    lo = torch.where(used, levels, 256.).amin(-1, keepdim=True)
    hi = torch.where(used, levels, -1.).amax(-1, keepdim=True)
    scale = torch.full_like(hi, 255.0) / (hi - lo)  # not `255.0 / t`: torch computes that as 255 * (1 / t)
    lut = (levels * scale + -lo * scale).trunc().clamp(0, 255)
    return torch.where(hi > lo, lut, levels).to(torch.uint8)


def _equalize_lut(hist: torch.Tensor) -> torch.Tensor:
    """`ImageOps.equalize`, integer arithmetic; `// 255` as the installed Pillow (older ones used 256)."""
    levels = torch.arange(256, device=hist.device)
    used = hist > 0
    top = torch.where(used, levels, 0).amax(-1, keepdim=True)  # the highest used level
    step = (hist.sum(-1, keepdim=True) - hist.gather(-1, top)) // 255
    lut = (step // 2 + hist.cumsum(-1) - hist) // step.clamp(min=1)
    identity = (used.sum(-1, keepdim=True) <= 1) | (step == 0)
    return torch.where(identity, levels, lut.clamp(max=255)).to(torch.uint8)  # Image.point clips to 255


def _contrast_lut(images: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """`ImageEnhance.Contrast`: blend with the rounded mean of the grey image, as a table `G, 3, 256`."""
    n = images.shape[-2] * images.shape[-1]
    mean = (2 * _grayscale(images).sum((1, 2, 3)) + n) // (2 * n)  # PIL's int(sum / n + 0.5), exactly
    levels = torch.arange(256, device=images.device)
    lut = _blend(mean.view(-1, 1), levels, factor.view(-1, 1))
    return lut.unsqueeze(1).expand(-1, images.shape[1], -1)


def _smooth(images: torch.Tensor) -> torch.Tensor:
    """PIL's `ImageFilter.SMOOTH` (3x3, centre 5, others 1, /13, rounded), border pixels copied as PIL does.

    PIL adds float32 products; an integer sum is exact and gives the same rounding, since S / 13 + 0.5 is never
    closer than 1/26 to an integer.
    """
    x = images.int()
    rows = x[..., :, :-2] + x[..., :, 1:-1] + x[..., :, 2:]
    total = rows[..., :-2, :] + rows[..., 1:-1, :] + rows[..., 2:, :] + 4 * x[..., 1:-1, 1:-1]
    out = images.clone()
    out[..., 1:-1, 1:-1] = ((total + 6) // 13).to(torch.uint8)
    return out


def _warp(images: torch.Tensor, matrix: torch.Tensor, mode: str, fill: torch.Tensor) -> torch.Tensor:
    """PIL's `Image.transform(AFFINE, data, fillcolor=fill)` per image; `matrix` float64 `G, 2, 3`: PIL's data."""
    g, _, h, w = images.shape
    x = torch.arange(w, dtype=torch.float64, device=images.device) + 0.5  # PIL evaluates at pixel centres
    y = (torch.arange(h, dtype=torch.float64, device=images.device) + 0.5).view(-1, 1)
    a0, a1, a2, a3, a4, a5 = matrix.view(g, 6, 1, 1).unbind(1)
    x_in, y_in = a0 * x + a1 * y + a2, a3 * x + a4 * y + a5  # PIL's double arithmetic, bit for bit
    # PIL samples the points inside [0, W) x [0, H), taps clamped to the edge ('border'), and fills the rest
    inside = ((x_in >= 0) & (x_in < w) & (y_in >= 0) & (y_in < h)).unsqueeze(1)
    if mode == 'nearest':  # PIL takes pixel floor(x_in); grid_sample would round x_in - 0.5 half to even
        x_in, y_in = x_in.floor() + 0.5, y_in.floor() + 0.5
    grid = torch.stack([(x_in * (2 / w) - 1).float(), (y_in * (2 / h) - 1).float()], -1)  # align_corners=False
    warped = F.grid_sample(images.float(), grid, mode=mode, padding_mode='border', align_corners=False)
    warped = (warped + _TRUNC_EPS).clamp_(0, 255).to(torch.uint8)  # PIL truncates
    return torch.where(inside, warped, fill.view(1, -1, 1, 1))


def _box_blur_params(radius: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """PIL's `_gaussian_blur_radius` (3 passes) and box weights, in its float32 arithmetic, on the host.

    Returns:
        int64 `r` (whole box radius), `ww` (weight of the 2r + 1 full pixels) and `fw` (weight of the two
        partial pixels), both in 1/2**24.
    """
    sigma = radius.float()  # PIL parses the radius as a C float
    sigma2 = sigma * sigma / 3
    length = torch.sqrt(12.0 * sigma2.double() + 1.0).float()  # double sqrt, stored in a float, as the C
    whole = torch.floor((length.double() - 1.0) / 2.0).float()
    frac = (2 * whole + 1) * (whole * (whole + 1) - 3 * sigma2) / (6 * (sigma2 - (whole + 1) * (whole + 1)))
    box = whole + frac
    r = box.long()
    ww = (torch.tensor(2.0 ** 24) / (box * 2 + 1)).long()
    fw = (2 ** 24 - (r * 2 + 1) * ww) // 2
    return r, ww, fw


def _box_blur_line(x: torch.Tensor, r: torch.Tensor, ww: torch.Tensor, fw: torch.Tensor, pad: int) -> torch.Tensor:
    """One PIL `ImagingLineBoxBlur` pass along the last dim, per-image radius; int64 in and out (0-255)."""
    w = x.shape[-1]
    source = (torch.arange(w + 2 * pad, device=x.device) - pad).clamp(0, w - 1)
    padded = x.index_select(-1, source)  # edge pixels repeated, as PIL's line blur reads them
    prefix = F.pad(padded.cumsum(-1), (1, 0))  # prefix[j] = sum(padded[:j])
    centre = torch.arange(w, device=x.device) + pad
    lo, hi = centre - r.view(-1, 1, 1, 1), centre + r.view(-1, 1, 1, 1) + 1  # full window [lo, hi)

    def take(t, index):
        return t.gather(-1, index.expand(x.shape))

    full = take(prefix, hi) - take(prefix, lo)
    bulk = full * ww.view(-1, 1, 1, 1) + (take(padded, lo - 1) + take(padded, hi)) * fw.view(-1, 1, 1, 1)
    return (bulk + (1 << 23)) >> 24


def _gaussian_blur(images: torch.Tensor, r: torch.Tensor, ww: torch.Tensor, fw: torch.Tensor,
                   pad: int) -> torch.Tensor:
    """PIL's `GaussianBlur`: 3 horizontal then 3 vertical box passes, each rounded to 8 bits like PIL."""
    x = images.long()
    for _ in range(3):
        x = _box_blur_line(x, r, ww, fw, pad)
    x = x.transpose(-1, -2)
    for _ in range(3):
        x = _box_blur_line(x, r, ww, fw, pad)
    return x.transpose(-1, -2).to(torch.uint8, memory_format=torch.contiguous_format)


# --- op families: host parameters, device kernel -------------------------------------------------------------

class _Group:
    """The images of one family (and interpolation mode) in one layer.

    `params` builds, on the host, the per-image parameters from the plan's rows of the group: `kind` (index into
    `names`), `arg` (level argument) and `aux` (uniform draw) as `G` tensors and the image `size` (H, W);
    `__call__` transforms the group's uint8 images `G, 3, H, W` on the device.
    """
    OPS: tuple[str, ...] = ()

    def __init__(self):
        self.names: list[str] = []

    def params(self, kind: torch.Tensor, arg: torch.Tensor, aux: torch.Tensor, size: tuple[int, int]) -> dict:
        raise NotImplementedError

    def __call__(self, images: torch.Tensor, p: dict) -> torch.Tensor:
        raise NotImplementedError


def _posterize_table(levels, bits):
    shift = 8 - bits.clamp(0, 8).long()  # 8 bits: unchanged (timm); 0 bits: black (see the module docstring)
    return (levels >> shift) << shift


_TABLES = {  # timm op -> its lookup table, from levels (256,) and the arguments (G, 1)
    'Invert': lambda levels, arg: 255 - levels,
    'Posterize': _posterize_table,
    'PosterizeIncreasing': _posterize_table,
    'PosterizeOriginal': _posterize_table,
    'Solarize': lambda levels, arg: torch.where(levels < arg, levels, 255 - levels),
    'SolarizeIncreasing': lambda levels, arg: torch.where(levels < arg, levels, 255 - levels),
    'SolarizeAdd': lambda levels, arg: torch.where(levels < 128, (levels + arg).clamp(max=255).long(), levels),
    'Brightness': lambda levels, arg: _blend(torch.zeros(()), levels, arg.float()),
    'BrightnessIncreasing': lambda levels, arg: _blend(torch.zeros(()), levels, arg.float()),
}


class _Table(_Group):
    """Point ops that only depend on their argument: a 256-entry table per image, built on the host."""
    OPS = tuple(_TABLES)

    def params(self, kind, arg, aux, size):
        levels, g = torch.arange(256), len(kind)
        tables = torch.stack([_TABLES[name](levels, arg[:, None]).expand(g, -1) for name in self.names], 1)
        return dict(lut=tables[torch.arange(g), kind].to(torch.uint8))  # each image's own op

    def __call__(self, images, p):
        return _apply_lut(images, p['lut'].unsqueeze(1).expand(-1, images.shape[1], -1))


class _Stat(_Group):
    """Point ops whose table depends on the image: built on the device from histograms / the grey mean."""
    OPS = ('AutoContrast', 'Equalize', 'Contrast', 'ContrastIncreasing')

    def params(self, kind, arg, aux, size):
        return dict(kind=kind, factor=arg.float())

    def __call__(self, images, p):
        hist = _histograms(images) if {'AutoContrast', 'Equalize'} & set(self.names) else None
        tables = {'AutoContrast': lambda: _autocontrast_lut(hist), 'Equalize': lambda: _equalize_lut(hist),
                  'Contrast': lambda: _contrast_lut(images, p['factor']),
                  'ContrastIncreasing': lambda: _contrast_lut(images, p['factor'])}
        luts = torch.stack([tables[name]() for name in self.names], 1)  # G, kinds, 3, 256
        index = p['kind'].view(-1, 1, 1, 1).expand(-1, 1, *luts.shape[2:])
        return _apply_lut(images, luts.gather(1, index).squeeze(1))


class _Color(_Group):
    """`ImageEnhance.Color` (and timm's Desaturate): blend with PIL's grey image."""
    OPS = ('Color', 'ColorIncreasing', 'Desaturate')

    def params(self, kind, arg, aux, size):
        factor = arg
        if 'Desaturate' in self.names:  # timm: enhance factor min(1, max(0, 1 - factor))
            factor = torch.where(kind == self.names.index('Desaturate'), (1. - arg).clamp(0., 1.), arg)
        return dict(factor=factor.float())

    def __call__(self, images, p):
        return _blend(_grayscale(images), images, p['factor'].view(-1, 1, 1, 1))


class _Sharpness(_Group):
    """`ImageEnhance.Sharpness`: blend with PIL's SMOOTH filter result."""
    OPS = ('Sharpness', 'SharpnessIncreasing')

    def params(self, kind, arg, aux, size):
        return dict(factor=arg.float())

    def __call__(self, images, p):
        return _blend(_smooth(images), images, p['factor'].view(-1, 1, 1, 1))


def _rotation(degrees: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """PIL's `Image.rotate(degrees)` as affine data `G, 6`: angle -radians(degrees) about (w / 2, h / 2)."""
    h, w = size
    angle = -torch.deg2rad(degrees)
    cos, sin = torch.cos(angle), torch.sin(angle)
    return torch.stack([cos, sin, cos * (-w / 2) + sin * (-h / 2) + w / 2,
                        -sin, cos, -sin * (-w / 2) + cos * (-h / 2) + h / 2], 1)


class _Affine(_Group):
    """Rotate, shear, translate: one warp for the group, a matrix per image, one group per interpolation."""
    OPS = ('Rotate', 'ShearX', 'ShearY', 'TranslateX', 'TranslateY', 'TranslateXRel', 'TranslateYRel')

    def __init__(self, mode: str, fill: tuple[int, ...] | int):
        super().__init__()
        self.mode = mode
        self.fill = torch.tensor(fill if isinstance(fill, (tuple, list)) else (fill,) * 3, dtype=torch.uint8)

    def params(self, kind, arg, aux, size):
        # PIL's affine data (a, b, c, d, e, f): output pixel (x, y) -> input (a x + b y + c, d x + e y + f); for
        # shears and translations the identity plus the argument at one entry (times the width / height for Rel)
        h, w = size
        unit = {'ShearX': [0, 1, 0, 0, 0, 0], 'ShearY': [0, 0, 0, 1, 0, 0], 'TranslateX': [0, 0, 1, 0, 0, 0],
                'TranslateY': [0, 0, 0, 0, 0, 1], 'TranslateXRel': [0, 0, w, 0, 0, 0],
                'TranslateYRel': [0, 0, 0, 0, 0, h], 'Rotate': [0] * 6}
        per_unit = torch.tensor([unit[name] for name in self.names], dtype=torch.float64)
        identity = torch.tensor([1., 0., 0., 0., 1., 0.], dtype=torch.float64)
        data = identity + arg[:, None] * per_unit[kind]
        if 'Rotate' in self.names:
            data = torch.where((kind == self.names.index('Rotate'))[:, None], _rotation(arg, size), data)
        return dict(matrix=data.view(-1, 2, 3), fill=self.fill)

    def __call__(self, images, p):
        return _warp(images, p['matrix'], self.mode, p['fill'])


class _Blur(_Group):
    """`ImageFilter.GaussianBlur` with a radius per image (GaussianBlurRand draws it as timm does)."""
    OPS = ('GaussianBlur', 'GaussianBlurRand')

    def params(self, kind, arg, aux, size):
        radius = arg
        if 'GaussianBlurRand' in self.names:  # timm: random.uniform(0.1, 2.0 * factor)
            drawn = 0.1 + (2.0 * arg - 0.1) * aux
            radius = torch.where(kind == self.names.index('GaussianBlurRand'), drawn, arg)
        r, ww, fw = _box_blur_params(radius)
        pad = int(torch.cat([r, r.new_zeros(1)]).max()) + 1  # host tensor: no device sync
        return dict(r=r, ww=ww, fw=fw, pad=pad)

    def __call__(self, images, p):
        return _gaussian_blur(images, p['r'], p['ww'], p['fw'], p['pad'])


_FAMILY_OF = {name: cls for cls in (_Table, _Stat, _Color, _Sharpness, _Affine, _Blur) for name in cls.OPS}


def _filters(resample) -> list:
    """timm's `resample` kwarg (one PIL filter, or a tuple that timm picks from per call) as a list."""
    return list(resample) if isinstance(resample, (list, tuple)) else [resample]


def _supported(op: aa.AugmentOp) -> bool:
    """A family for the op, a twin of its level function, and (affine ops) grid_sample modes for its filters."""
    if op.name not in _FAMILY_OF or (op.level_fn is not None and vector_level_fn(op.level_fn) is None):
        return False
    return _FAMILY_OF[op.name] is not _Affine or all(f in _GRID_MODES for f in _filters(op.kwargs['resample']))


def _upload(tensors: list[torch.Tensor], device: torch.device) -> list[torch.Tensor]:
    """Host tensors -> `device`, one copy per dtype: concatenated, pinned (CUDA), copied without blocking."""
    if device.type == 'cpu':
        return tensors
    moved = [None] * len(tensors)
    for dtype in dict.fromkeys(t.dtype for t in tensors):
        ids = [i for i, t in enumerate(tensors) if t.dtype == dtype]
        flat = torch.cat([tensors[i].reshape(-1) for i in ids])
        if device.type == 'cuda':
            flat = flat.pin_memory()
        flat = flat.to(device, non_blocking=True)
        for i, part in zip(ids, flat.split([tensors[i].numel() for i in ids])):
            moved[i] = part.view(tensors[i].shape)
    return moved


def _rows(images: torch.Tensor) -> torch.Tensor:
    """The uint8 batch as one row per image, of the widest words that divide a row: the index kernels then move
    8-byte words instead of bytes (on CPU, `index_select` of 4-D uint8 is 30x slower than of int64 rows)."""
    row = images.reshape(len(images), math.prod(images.shape[1:]))
    for dtype, size in ((torch.int64, 8), (torch.int32, 4), (torch.int16, 2)):
        if row.shape[1] % size == 0:
            return row.view(dtype)
    return row


def _check_images(images: torch.Tensor) -> None:
    if images.dtype != torch.uint8 or images.dim() != 4 or images.shape[1] != 3:
        raise ValueError(f'expected uint8 images B, 3, H, W, got {images.dtype} {tuple(images.shape)}')


# --- the transform ----------------------------------------------------------------------------------------------

@dataclass
class Plan:
    """Every random decision of one call, per image (rows) and layer (columns), as host tensors `B, num_layers`.

    Attributes:
        op: int64 index into the policy's ops.
        applied: bool, the op's `prob` coin came up.
        magnitude: float64, after the noise and the clipping.
        arg: float64, the level function's output (0 for ops without argument).
        interpolation: int64 index into the op's interpolation choices (affine ops).
        aux: float64 uniform in [0, 1) for ops that draw inside (GaussianBlurRand's radius).
    """
    op: torch.Tensor
    applied: torch.Tensor
    magnitude: torch.Tensor
    arg: torch.Tensor
    interpolation: torch.Tensor
    aux: torch.Tensor


class BatchRandAugment:
    """timm RandAugment applied independently to every image of a uint8 batch, batched on its device.

    Args:
        spec: a timm RandAugment spec, e.g. `'rand-m9-mstd0.5-inc1'`, `'rand-m7-n3-mstd0.5'`, `'rand-m9-t3aw'`
            (keys m, n, p, mstd, mmax, inc, t).
        hparams: timm hparams; default `img_mean=FILL` (the fill colour), like timm's `create_transform`;
            `interpolation` fixes the affine filter, `translate_pct` the translation range.

    Raises:
        ValueError: the policy holds an op (or level function / filter) with no tensor version here.
    """

    def __init__(self, spec: str = 'rand-m9-mstd0.5-inc1', hparams: dict | None = None):
        self.spec = spec
        self.policy = aa.rand_augment_transform(spec, dict(img_mean=FILL) | (hparams or {}))
        ops = self.policy.ops
        unsupported = [op.name for op in ops if not _supported(op)]
        if unsupported:
            raise ValueError(f'{spec}: no tensor version of {unsupported}')
        weights = self.policy.choice_weights
        if weights is not None and self.policy.num_layers > int((torch.as_tensor(weights) > 0).sum()):
            raise ValueError(f'{spec}: {self.policy.num_layers} layers without replacement from fewer ops')
        self.weights = None if weights is None else torch.as_tensor(weights, dtype=torch.float64)
        self.prob = torch.tensor([float(op.prob) for op in ops], dtype=torch.float64)
        self.magnitude = torch.tensor([float(op.magnitude) for op in ops], dtype=torch.float64)
        self.magnitude_std = torch.tensor([float(op.magnitude_std) for op in ops], dtype=torch.float64)
        self.magnitude_max = torch.tensor([float(op.magnitude_max or aa._LEVEL_DENOM) for op in ops],
                                          dtype=torch.float64)
        self.level_fns = [vector_level_fn(op.level_fn) if op.level_fn is not None else None for op in ops]
        self._build_groups()

    def _build_groups(self) -> None:
        """Route every (op, interpolation choice) to a group and to its kind (index into the group's names)."""
        self.groups: list[_Group] = []
        keys, routes, kinds, self.num_modes = {}, [], [], []
        for op in self.policy.ops:
            family = _FAMILY_OF[op.name]
            modes = [_GRID_MODES[f] for f in _filters(op.kwargs['resample'])] if family is _Affine else [None]
            route, kind = [], []
            for mode in modes:
                key = (family, mode)
                if key not in keys:
                    keys[key] = len(self.groups)
                    self.groups.append(_Affine(mode, op.kwargs['fillcolor']) if family is _Affine else family())
                group = self.groups[keys[key]]
                if op.name not in group.names:
                    group.names.append(op.name)
                route.append(keys[key])
                kind.append(group.names.index(op.name))
            routes.append(route)
            kinds.append(kind)
            self.num_modes.append(len(modes))
        width = max(self.num_modes, default=1)
        self.route = torch.tensor([r + r[-1:] * (width - len(r)) for r in routes], dtype=torch.long)
        self.kind = torch.tensor([k + k[-1:] * (width - len(k)) for k in kinds], dtype=torch.long)
        self.num_modes = torch.tensor(self.num_modes, dtype=torch.long)

    def sample(self, batch_size: int, generator: torch.Generator | None = None) -> Plan:
        """Draw the decisions of `batch_size` images with timm's distribution (host, torch CPU generator).

        Args:
            batch_size: images.
            generator: a CPU generator; default torch's global one (seed it, e.g. with `transforms.seeded`).

        Returns:
            The plan, `batch_size x num_layers` per field.
        """
        shape = (batch_size, self.policy.num_layers)

        def draw(normal: bool = False) -> torch.Tensor:
            return (torch.randn if normal else torch.rand)(shape, dtype=torch.float64, generator=generator)

        if self.weights is None:  # np.random.choice(ops, num_layers, replace=True)
            op = torch.randint(len(self.policy.ops), shape, generator=generator)
        elif shape[1] == 0 or batch_size == 0:
            op = torch.zeros(shape, dtype=torch.long)
        else:  # np.random.choice(ops, num_layers, replace=False, p=weights): successive weighted draws
            op = torch.multinomial(self.weights.expand(batch_size, -1), shape[1], replacement=False,
                                   generator=generator)
        coin, uniform, noise, negate, pick, aux = draw(), draw(), draw(normal=True), draw(), draw(), draw()
        applied = coin <= self.prob[op]  # timm skips the op when random() > prob
        base, std = self.magnitude[op], self.magnitude_std[op]
        magnitude = torch.where(std == float('inf'), uniform * base, torch.where(std > 0, base + std * noise, base))
        magnitude = magnitude.minimum(self.magnitude_max[op]).clamp(min=0.)
        flip = negate > 0.5  # timm's _randomly_negate: -v if random() > 0.5
        arg = torch.zeros(shape, dtype=torch.float64)
        for k, (op_k, level_fn) in enumerate(zip(self.policy.ops, self.level_fns)):
            if level_fn is not None:
                arg = torch.where(op == k, level_fn(magnitude, flip, op_k.hparams), arg)
        interpolation = (pick * self.num_modes[op]).long()  # random.choice among the op's filters
        return Plan(op=op, applied=applied, magnitude=magnitude, arg=arg, interpolation=interpolation, aux=aux)

    def apply(self, images: torch.Tensor, plan: Plan) -> torch.Tensor:
        """Run a plan on uint8 `B, 3, H, W` images; returns a new uint8 batch on the same device.

        Args:
            images: the batch; plan rows follow its images.
            plan: from `sample(len(images))` (or built by hand, e.g. to compare with PIL).

        Returns:
            The augmented batch, same shape, dtype and device.
        """
        _check_images(images)
        if len(plan.op) != len(images):
            raise ValueError(f'a plan for {len(plan.op)} images, {len(images)} given')
        size = tuple(images.shape[-2:])
        jobs = []
        for layer in range(plan.op.shape[1]):
            op, mode = plan.op[:, layer], plan.interpolation[:, layer]
            route = torch.where(plan.applied[:, layer], self.route[op, mode], -1)
            for g, group in enumerate(self.groups):  # empty groups included: a fixed op count
                idx = (route == g).nonzero().squeeze(1)
                kind = self.kind[op[idx], mode[idx]]
                params = group.params(kind, plan.arg[idx, layer], plan.aux[idx, layer], size)
                jobs.append((group, dict(params, idx=idx)))
        tensors = [v for _, p in jobs for v in p.values() if isinstance(v, torch.Tensor)]
        moved = iter(_upload(tensors, images.device))
        out = images.clone(memory_format=torch.contiguous_format)
        rows = _rows(out)  # a view: copying rows into it writes `out`
        for group, params in jobs:
            p = {k: next(moved) if isinstance(v, torch.Tensor) else v for k, v in params.items()}
            picked = rows.index_select(0, p['idx']).view(torch.uint8).view(len(p['idx']), *out.shape[1:])
            rows.index_copy_(0, p['idx'], _rows(group(picked, p)))
        return out

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        """Augment uint8 `B, 3, H, W` images (CPU or CUDA) with fresh draws; same shape, dtype and device."""
        return self.apply(images, self.sample(len(images)))

    def __repr__(self) -> str:
        return f'{type(self).__name__}({self.spec!r}, groups={[(type(g).__name__, g.names) for g in self.groups]})'


def apply_op(images: torch.Tensor, name: str, args: torch.Tensor | None = None, *, aux: torch.Tensor | None = None,
             interpolation: str = 'bicubic', fill: tuple[int, ...] = FILL) -> torch.Tensor:
    """Apply one timm op to a uint8 batch, image i with its own level argument `args[i]` (what timm passes to PIL).

    Args:
        images: uint8 `B, 3, H, W`, any device.
        name: timm op name, e.g. 'Rotate', 'PosterizeIncreasing', 'SolarizeAdd'.
        args: `B` level arguments (degrees, bits, threshold, factor, pixels, ...); None for ops without one.
        aux: `B` uniforms for GaussianBlurRand's radius draw (default 0.5).
        interpolation: 'bilinear', 'bicubic' or 'nearest', for the affine ops.
        fill: the colour outside the warped image.

    Returns:
        The transformed batch, same shape, dtype and device.
    """
    _check_images(images)
    if name not in _FAMILY_OF:
        raise ValueError(f'no tensor version of {name!r}')
    n = len(images)
    family = _FAMILY_OF[name]
    group = _Affine(interpolation, fill) if family is _Affine else family()
    group.names.append(name)
    args = torch.zeros(n, dtype=torch.float64) if args is None else torch.as_tensor(args, dtype=torch.float64).cpu()
    aux = torch.full((n,), 0.5, dtype=torch.float64) if aux is None else torch.as_tensor(aux, dtype=torch.float64).cpu()
    params = group.params(torch.zeros(n, dtype=torch.long), args, aux, tuple(images.shape[-2:]))
    keys = [k for k, v in params.items() if isinstance(v, torch.Tensor)]
    params.update(zip(keys, _upload([params[k] for k in keys], images.device)))
    return group(images, params)
