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
2. `BatchRandAugment.apply` runs the plan with the batched kernels of `rand_augment_ops`: one group per op family
   (and, for the affine ops, per interpolation mode: timm picks BILINEAR or BICUBIC per call, the plan draws it
   per image and each mode's images are warped together). For each layer, in order, each group gathers the
   images that drew (and passed the prob coin for) one of its ops with `index_select`, transforms them and
   scatters them back with `index_copy_`, on rows of 8-byte words (fast index kernels). An image takes one op
   per layer, so the groups of a layer are disjoint and their order does not matter.

Cost: the Python loops run over layers x groups (and the policy's ops while sampling), never over images, and
empty groups are not skipped, so the number of dispatched torch ops is fixed by the policy, whatever the batch
size (zero-sized ops are cheap). All per-call index and parameter tensors are built on the host, packed into one
pinned buffer per dtype and copied with `non_blocking=True` (4 copies a call); nothing on the device is read
back, so a call never waits for the GPU (the tests run `apply` on the meta device, where a read would fail).

`apply_op` runs one op on a batch with given level arguments, through the same groups (to compare with timm's
PIL ops).
"""
import math
from dataclasses import dataclass
from functools import partial

import torch
from timm.data import IMAGENET_DEFAULT_MEAN

# --- timm.data.auto_augment is imported here only. The underscored names are timm-private, used as they are in
# timm==1.0.31 (pinned in pyproject.toml): after a timm upgrade, check them and their vectorised twins below.
from timm.data.auto_augment import AugmentOp, rand_augment_transform
from timm.data.auto_augment import (_LEVEL_DENOM, _enhance_increasing_level_to_arg, _enhance_level_to_arg,
                                    _minmax_level_to_arg, _posterize_increasing_level_to_arg,
                                    _posterize_level_to_arg, _posterize_original_level_to_arg, _rotate_level_to_arg,
                                    _shear_level_to_arg, _solarize_add_level_to_arg,
                                    _solarize_increasing_level_to_arg, _solarize_level_to_arg,
                                    _translate_abs_level_to_arg, _translate_rel_level_to_arg)

from .rand_augment_ops import FAMILIES, GRID_MODES, Affine, Group, create_group

FILL = tuple(round(255 * m) for m in IMAGENET_DEFAULT_MEAN)  # timm's `img_mean` hparam: the affine fill colour


# --- level functions: timm's LEVEL_TO_ARG, vectorised -------------------------------------------------------
# m: float64 magnitudes; flip: the `_randomly_negate` coin (timm negates when random() > 0.5); hp: op.hparams.
# Same float64 operations in the same order as timm, so the arguments are bit-identical for equal magnitudes.

def _negate(value: torch.Tensor, flip: torch.Tensor) -> torch.Tensor:
    return torch.where(flip, -value, value)


def _level(m: torch.Tensor) -> torch.Tensor:
    return m / _LEVEL_DENOM


def _minmax(m, flip, hp, min_val=0., max_val=1.0, clamp=True):
    value = min_val + (max_val - min_val) * _level(m)
    return value.clamp(min_val, max_val) if clamp else value


_LEVEL_FNS = {
    _rotate_level_to_arg: lambda m, flip, hp: _negate(_level(m) * 30., flip),
    _enhance_level_to_arg: lambda m, flip, hp: _level(m) * 1.8 + 0.1,
    _enhance_increasing_level_to_arg: lambda m, flip, hp: (1.0 + _negate(_level(m) * .9, flip)).clamp(min=0.1),
    _shear_level_to_arg: lambda m, flip, hp: _negate(_level(m) * 0.3, flip),
    _translate_abs_level_to_arg: lambda m, flip, hp: _negate(_level(m) * float(hp['translate_const']), flip),
    _translate_rel_level_to_arg: lambda m, flip, hp: _negate(_level(m) * hp.get('translate_pct', 0.45), flip),
    _posterize_level_to_arg: lambda m, flip, hp: (_level(m) * 4).trunc(),
    _posterize_increasing_level_to_arg: lambda m, flip, hp: 4 - (_level(m) * 4).trunc(),
    _posterize_original_level_to_arg: lambda m, flip, hp: (_level(m) * 4).trunc() + 4,
    _solarize_level_to_arg: lambda m, flip, hp: (_level(m) * 256).trunc().clamp(max=256),
    _solarize_increasing_level_to_arg: lambda m, flip, hp: 256 - (_level(m) * 256).trunc().clamp(max=256),
    _solarize_add_level_to_arg: lambda m, flip, hp: (_level(m) * 110).trunc().clamp(max=128),
    _minmax_level_to_arg: _minmax,
}


def vector_level_fn(level_fn):
    """The vectorised twin `f(magnitudes, flip, hparams) -> args` of a timm level function, or None if unknown."""
    if isinstance(level_fn, partial) and level_fn.func is _minmax_level_to_arg and not level_fn.args:
        return partial(_minmax, **level_fn.keywords)  # Desaturate, GaussianBlur: fixed min_val / max_val
    return _LEVEL_FNS.get(level_fn)


# --- the policy's ops on the kernels' groups; batches as rows; host -> device ------------------------------------

def _filters(resample) -> list:
    """timm's `resample` kwarg (one PIL filter, or a tuple that timm picks from per call) as a list."""
    return list(resample) if isinstance(resample, (list, tuple)) else [resample]


def _supported(op: AugmentOp) -> bool:
    """A family for the op, a twin of its level function, and (affine ops) grid_sample modes for its filters."""
    if op.name not in FAMILIES or (op.level_fn is not None and vector_level_fn(op.level_fn) is None):
        return False
    return FAMILIES[op.name] is not Affine or all(f in GRID_MODES for f in _filters(op.kwargs['resample']))


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
        self.policy = rand_augment_transform(spec, dict(img_mean=FILL) | (hparams or {}))
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
        self.magnitude_max = torch.tensor([float(op.magnitude_max or _LEVEL_DENOM) for op in ops],
                                          dtype=torch.float64)
        self.level_fns = [vector_level_fn(op.level_fn) if op.level_fn is not None else None for op in ops]
        self._build_groups()

    def _build_groups(self) -> None:
        """Route every (op, interpolation choice) to a group and to its kind (index into the group's names)."""
        self.groups: list[Group] = []
        keys, routes, kinds, self.num_modes = {}, [], [], []
        for op in self.policy.ops:
            family = FAMILIES[op.name]
            modes = [GRID_MODES[f] for f in _filters(op.kwargs['resample'])] if family is Affine else [None]
            route, kind = [], []
            for mode in modes:
                key = (family, mode)
                if key not in keys:
                    keys[key] = len(self.groups)
                    self.groups.append(create_group(family, mode, op.kwargs['fillcolor']))
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
    if name not in FAMILIES:
        raise ValueError(f'no tensor version of {name!r}')
    n = len(images)
    group = create_group(FAMILIES[name], interpolation, fill)
    group.names.append(name)
    args = torch.zeros(n, dtype=torch.float64) if args is None else torch.as_tensor(args, dtype=torch.float64).cpu()
    aux = torch.full((n,), 0.5, dtype=torch.float64) if aux is None else torch.as_tensor(aux, dtype=torch.float64).cpu()
    params = group.params(torch.zeros(n, dtype=torch.long), args, aux, tuple(images.shape[-2:]))
    keys = [k for k, v in params.items() if isinstance(v, torch.Tensor)]
    params.update(zip(keys, _upload([params[k] for k in keys], images.device)))
    return group(images, params)
