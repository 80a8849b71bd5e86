"""timm's RandAugment ops on uint8 batches: PIL's arithmetic, a parameter per image, any device.

The ops fall in families that share one batched kernel, a `Group`:

- `Table`: Invert, Posterize*, Solarize*, SolarizeAdd, Brightness*: a 256-entry lookup table per image, built on
  the host from the arguments;
- `Stat`: AutoContrast, Equalize, Contrast*: per-image, per-channel tables built on the device from the images'
  histograms / grey mean;
- `Color`: Color*, Desaturate (blend with PIL's grey image); `Sharpness`: Sharpness* (blend with PIL's SMOOTH);
- `Affine`: Rotate, ShearX/Y, TranslateX/Y(Rel): PIL's affine data per image (output -> input pixel), the
  sampling grid computed from it in float64 as PIL does, one `grid_sample` per interpolation mode (a group per
  mode);
- `Blur`: GaussianBlur, GaussianBlurRand: PIL's three extended box-blur passes with a radius per image.

A group's `params` builds each image's parameters on the host; calling the group transforms its images on the
device and reads nothing back. `create_group` makes the group of a family.

Fidelity to timm's PIL ops: table, stat, color and sharpness ops redo PIL's integer / float32 arithmetic and
truncation and match it bit for bit; GaussianBlur redoes PIL's fixed-point box blur. The affine ops follow
PIL's conventions (the matrix maps output to input pixel centres, rotation about the centre, taps clamped to
the edge, points outside [0, W) x [0, H) take the fill colour, truncation) on torch's kernels: bilinear matches
up to float32 rounding; bicubic uses torch's cubic (a = -0.75) where PIL uses a = -1.
One deliberate difference: Posterize to 0 bits gives a black image (older Pillow, TF); the Pillow that timm
runs on here raises ValueError for 0 bits, which `rand-m9-mstd0.5-inc1` reaches whenever the magnitude clips
to 10.
"""
import torch
import torch.nn.functional as F
from PIL import Image

__all__ = ['GRID_MODES', 'FAMILIES', 'Group', 'Table', 'Stat', 'Color', 'Sharpness', 'Affine', 'Blur',
           'create_group']

GRID_MODES = {Image.Resampling.NEAREST: 'nearest', Image.Resampling.BILINEAR: 'bilinear',
              Image.Resampling.BICUBIC: 'bicubic'}  # PIL filter -> grid_sample mode
_TRUNC_EPS = 1e-3  # float32 grid_sample lands a hair below integers where PIL's double arithmetic is exact


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

class Group:
    """The kernel of one family (and interpolation mode), run on the images of one layer that drew its ops.

    `OPS` are the timm ops the family implements; `names` those this group runs, in the order `kind` indexes.
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


class Table(Group):
    """Point ops that only depend on their argument: a 256-entry table per image, built on the host."""
    OPS = tuple(_TABLES)

    def params(self, kind, arg, aux, size):
        levels, g = torch.arange(256), len(kind)
        tables = torch.stack([_TABLES[name](levels, arg[:, None]).expand(g, -1) for name in self.names], 1)
        return dict(lut=tables[torch.arange(g), kind].to(torch.uint8))  # each image's own op

    def __call__(self, images, p):
        return _apply_lut(images, p['lut'].unsqueeze(1).expand(-1, images.shape[1], -1))


class Stat(Group):
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


class Color(Group):
    """`ImageEnhance.Color` (and timm's Desaturate): blend with PIL's grey image."""
    OPS = ('Color', 'ColorIncreasing', 'Desaturate')

    def params(self, kind, arg, aux, size):
        factor = arg
        if 'Desaturate' in self.names:  # timm: enhance factor min(1, max(0, 1 - factor))
            factor = torch.where(kind == self.names.index('Desaturate'), (1. - arg).clamp(0., 1.), arg)
        return dict(factor=factor.float())

    def __call__(self, images, p):
        return _blend(_grayscale(images), images, p['factor'].view(-1, 1, 1, 1))


class Sharpness(Group):
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


class Affine(Group):
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


class Blur(Group):
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


FAMILIES = {name: cls for cls in (Table, Stat, Color, Sharpness, Affine, Blur) for name in cls.OPS}  # op -> family


def create_group(family: type[Group], mode: str | None = None, fill: tuple[int, ...] | int = 0) -> Group:
    """A new group of `family`, running no op yet (append op names to its `names`).

    Args:
        family: a class of `FAMILIES`.
        mode: the `grid_sample` mode of an `Affine` group ('nearest', 'bilinear', 'bicubic'); ignored otherwise.
        fill: the colour of an `Affine` group outside the warped image; ignored otherwise.

    Returns:
        The group.
    """
    return Affine(mode, fill) if family is Affine else family()
