"""The schema of `params.yaml`: every setting of the pipeline, its type, range, default and meaning.

Each section is the input of one component, handed over whole (torchtitan's pattern): `Sample` ->
`write_sample`, `Convert` -> `convert_folder`, `Data` + `Loader` + `Augment` -> the loaders and the
batch augmentation, a resolved `Variant` -> the `Trainer`, the optimizer and the EMA, `Runtime` ->
`init_distributed` and `parallelize`, `Checkpoint`, `Tracking`, `Eval` -> their stages. The
defaults are what the demo runs (minutes on a 2-core CPU); `params.yaml` states them all, so DVC
tracks every key, and a test checks that it states nothing else. Profiles (`profiles/*.yaml`, e.g.
the official ImageNet recipes) are complete params files of their own.

Stages load the file with `load_params(path)`; a malformed file stops with one message that names
the file, the dotted key and the reason. Validation reads only the file: it never looks at the
data folder (the stages that read `data.source` check it, `sgformer.cli.load_params_or_exit`), and
it imports neither torch nor timm, unless a RandAugment spec is set (timm parses it):

    python -m sgformer.config check [params.yaml]     # validate and print the resolved config
    python -m sgformer.config get runtime.max_restarts [params.yaml]   # one resolved value (launch scripts)
"""
import json
import re
import sys
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, create_model, field_validator, model_validator

Fraction = Annotated[float, Field(ge=0, le=1)]

# The registered timm names (sgformer.models.sgformer); a test keeps the two in step.
SGFORMER_MODELS = ('sgformer_nano', 'sgformer_tiny', 'sgformer_s', 'sgformer_m', 'sgformer_b')

# A variant name becomes a DVC stage name (`train@<name>`), a folder and a shell word: letters,
# digits, `_` and `-` only (`.` would hide later edits from DVC's params dependency).
VARIANT_NAME = re.compile(r'^[A-Za-z0-9_][A-Za-z0-9_-]*$')

class ConfigError(ValueError):
    """A user error in params.yaml, already phrased for the user."""


class _Section(BaseModel):
    model_config = ConfigDict(extra='forbid', frozen=True)


class Sample(_Section):
    """The procedurally drawn ImageNet-layout dataset written by the `make_sample` stage."""

    out: str = Field('data/sample', description='Folder the sample is written to (train/, val/).')
    num_classes: int = Field(10, ge=1, le=10, description='Number of classes (at most 10 drawings exist).')
    train_per_class: int = Field(400, ge=1, description='Training images per class.')
    val_per_class: int = Field(50, ge=1, description='Validation images per class.')
    min_size: int = Field(64, ge=16, description='Smallest image side in pixels.')
    max_size: int = Field(112, ge=16, description='Largest image side in pixels.')
    jpeg_quality: int = Field(90, ge=1, le=100, description='JPEG quality of the sample files.')
    bad_files: bool = Field(True, description='Add deliberately broken files (truncated, empty, PNG, CMYK, gray).')
    seed: int = Field(0, ge=0, description='Seed: the same seed writes the same bytes.')

    @model_validator(mode='after')
    def _sizes_ordered(self):
        if self.min_size > self.max_size:
            raise ValueError(f'min_size ({self.min_size}) is larger than max_size ({self.max_size})')
        return self


class Data(_Section):
    """Where the images are and how batches are read from them."""

    source: str = Field('data/sample', description='ImageNet-layout folder (train/<synset>/*.JPEG, val/<synset>/*.JPEG); '
                        'may be sample.out before make_sample has run, any other path must exist.')
    betons: str = Field('data/betons', description='Folder of train.beton, val.beton and class_index.json.')
    backend: Literal['ffcv', 'folder'] = Field('ffcv', description='ffcv: betons; folder: torchvision ImageFolder.')


class Convert(_Section):
    """Folder -> FFCV beton conversion (ffcv-imagenet used 500 px, 50 % JPEG, quality 90)."""

    max_resolution: int = Field(160, ge=16, description='Longest side stored in the beton (ImageNet: 500).')
    jpeg_quality: int = Field(90, ge=1, le=100, description='Quality of the JPEGs stored in the beton.')
    compress_probability: Fraction = Field(0.5, description='Share of images stored as JPEG in proportion mode.')
    write_mode: Literal['raw', 'jpg', 'smart', 'proportion'] = Field('proportion', description='ffcv RGBImageField mode.')
    num_workers: int = Field(2, ge=1, description='Processes that check and write images.')
    max_bad_fraction: Fraction = Field(0.05, description='Fail when more than this share of images is unreadable '
                                       '(the sample holds 2 unreadable files of 4,505).')


class Loader(_Section):
    """Settings of the train and val loaders."""

    num_workers: int = Field(2, ge=0, description='Loader worker threads (ffcv) or processes (folder).')
    os_cache: bool = Field(True, description='ffcv: let the OS page cache hold the beton (fits in RAM).')
    batches_ahead: int = Field(2, ge=1, description='ffcv: batches prepared ahead of the training step.')


def check_rand_augment_spec(spec: str) -> str:
    """Raise ValueError unless timm parses `spec` as a RandAugment spec and uses every section of it.

    timm's `rand_augment_transform` is the grammar (imported only when a spec is set: validating the
    demo's params.yaml loads no torch). Each section is parsed by timm alone, so its error names the
    section. Two of timm's leniencies are refused, since a typo would silently train with another
    policy: a section without a number (timm skips it) and an unknown transform set `t<name>`
    (timm falls back to its default set).
    """
    from timm.data.auto_augment import rand_augment_choices, rand_augment_transform
    name, *sections = spec.split('-')
    if name != 'rand':
        raise ValueError(f'only RandAugment specs (rand-...) are supported, got {spec!r}')
    for section in sections:
        if section.startswith('t'):
            if rand_augment_choices(section[1:]) is rand_augment_choices(''):
                raise ValueError(f'{spec!r}: unknown transform set {section!r}')
            continue
        key = re.match(r'^[a-z]*', section).group(0)
        if key == section:
            raise ValueError(f'{spec!r}: {section!r} needs a number after {key!r}')
        try:
            rand_augment_transform(f'rand-{section}', {})
        except AssertionError:  # timm: 'Unknown RandAugment config section'
            raise ValueError(f'{spec!r}: unknown section {section!r}') from None
        except ValueError:
            raise ValueError(f'{spec!r}: {section!r} needs a number after {key!r}') from None
    rand_augment_transform(spec, {})
    return spec


class Augment(_Section):
    """Training augmentation (timm names). The defaults are light, for minutes of
    training on the sample; the ImageNet profile sets the official recipe."""

    scale: tuple[Fraction, Fraction] = Field((0.35, 1.0), description='RandomResizedCrop area range (official: 0.08-1).')
    ratio: tuple[float, float] = Field((0.75, 1.3333333), description='RandomResizedCrop aspect-ratio range.')
    hflip: Fraction = Field(0.5, description='Horizontal flip probability.')
    auto_augment: str | None = Field(None, description="timm RandAugment spec, e.g. 'rand-m9-mstd0.5-inc1' "
                                     '(official); null: off.')
    reprob: Fraction = Field(0.0, description='Random erasing probability, pixel mode (official: 0.25).')
    mixup: float = Field(0.0, ge=0, description='Mixup alpha, 0: off (official: 0.8).')
    cutmix: float = Field(0.0, ge=0, description='CutMix alpha, 0: off (official: 1.0).')
    smoothing: Fraction = Field(0.1, description='Label smoothing of the (mixed) targets.')

    @field_validator('auto_augment')
    @classmethod
    def _rand_augment_spec(cls, spec: str | None) -> str | None:
        return spec if spec is None else check_rand_augment_spec(spec)

    @property
    def mixing(self) -> bool:
        return self.mixup > 0 or self.cutmix > 0


class ProgressiveResize(_Section):
    """ffcv-imagenet's progressive resizing: train at `min_size` up to epoch `start_ramp`, then at a
    side growing linearly to `img_size` at epoch `end_ramp` (rounded down to a multiple of 32), then
    at `img_size`. Validation always runs at `img_size`."""

    min_size: int = Field(gt=0, multiple_of=32, description='Training side of the first epochs (multiple of 32).')
    start_ramp: int = Field(ge=0, description='Last epoch (0-based) at min_size.')
    end_ramp: int = Field(ge=0, description='First epoch at img_size.')


class Train(_Section):
    """Training settings; every variant inherits them and may override any of them."""

    epochs: int = Field(8, ge=1, description='Training epochs.')
    batch_size: int = Field(64, ge=1, description='Global batch size of one optimizer step (split evenly over '
                            'world_size ranks and grad_accum_steps micro-steps).')
    world_size: int = Field(1, ge=1, description='Number of training processes (GPUs, or CPU ranks).')
    grad_accum_steps: int = Field(1, ge=1, description="Micro-steps per optimizer step (timm's --grad-accum-steps): "
                                  'each rank runs batch_size / (world_size * grad_accum_steps) images at a time, '
                                  'the update is the one of the whole batch.')
    lr: float = Field(2e-3, gt=0, description='Peak learning rate (AdamW) at lr_base_batch images per step.')
    lr_base_batch: int | None = Field(None, ge=1, description='Batch size `lr` is meant for: the run uses '
                                      'lr * batch_size / lr_base_batch (linear scaling); null: lr as given.')
    weight_decay: float = Field(0.05, ge=0, description='AdamW weight decay (not on norms, biases, pos_embed).')
    warmup_epochs: float = Field(1, ge=0, description='Linear warmup epochs before the cosine decay (per step).')
    warmup_lr: float = Field(1e-6, ge=0, description='Learning rate the warmup starts from.')
    min_lr: float = Field(1e-5, ge=0, description='Learning rate the cosine decays to.')
    ema_decay: float = Field(0.99, ge=0, lt=1, description='Weight EMA decay per step (~100-step horizon for the '
                             'demo; official: 0.99992).')
    ema_warmup: bool = Field(True, description='Ramp the EMA decay up over the first steps (for short runs).')
    grad_clip: float | None = Field(1.0, gt=0, description='Clip the gradient norm to this (null: no clipping).')
    max_nonfinite_steps: int = Field(10, ge=1, description='Abort after this many consecutive NaN/inf losses.')
    drop_path_rate: float = Field(0.0, ge=0, lt=1, description='Stochastic depth at the deepest block.')
    img_size: int = Field(64, gt=0, multiple_of=32, description='Training resolution (square side, multiple of 32); '
                          'also the validation resolution.')
    progressive_resize: ProgressiveResize | None = Field(None, description='Train at smaller sides first '
                                                         '(ffcv-imagenet); null: always at img_size.')
    num_classes: int | None = Field(None, ge=0, description="Classifier outputs (0: no classifier); null: the betons' "
                                    'class count (class_index.json); a number that disagrees is refused at start.')
    init_from: str | None = Field(None, min_length=1, description='Start from these weights (fine-tuning): an export '
                                  'folder (models/<variant>) or an official .pth (path or http(s) URL); the EMA weights, '
                                  'pos_embed resampled, the classifier re-initialised for another class count. null: '
                                  'random initialisation.')
    layer_decay: float | None = Field(None, gt=0, le=1, description="Layer-wise lr decay (timm's, through the model's "
                                      'group_matcher): each block group earlier gets this factor more; null: off.')
    seed: int = Field(0, ge=0, description='Seed of weights, data order and augmentation.')


INHERITED = tuple(Train.model_fields)


def _nullable(info) -> bool:
    """Whether a field's type takes None (then a variant's explicit null means null, not "inherit")."""
    return type(None) in getattr(info.annotation, '__args__', ())


def _override(info, section: str) -> tuple:
    """A field of a shared section as an optional variant field: same type and ranges, None (or the
    key left out) meaning "inherit"; for a field that takes null, only the key left out inherits."""
    annotation = info.annotation | None
    if info.metadata:
        annotation = Annotated[annotation, *info.metadata]
    return annotation, Field(None, description=f'Default: the {section} value. {info.description}')


# A variant's augmentation: any `augment` field, the rest taken from the shared section.
AugmentOverride = create_model(
    'AugmentOverride',
    __base__=_Section,
    __doc__='Augmentation settings of one variant; fields left out are taken from `augment`.',
    **{name: _override(info, 'augment') for name, info in Augment.model_fields.items()},
)


class _VariantBase(_Section):
    model: Literal[SGFORMER_MODELS] = Field(description="SG-Former model (timm name), e.g. 'sgformer_s'.")
    augment: AugmentOverride | None = Field(
        None, description='Augmentation of this variant; keys left out are taken from the shared `augment`.')

    def inherit(self, train: Train, augment: Augment) -> 'Variant':
        """This variant with every unset field taken from `train` and its augmentation from `augment`.

        Raises:
            ValidationError: the merged augmentation breaks the `Augment` schema.
        """
        update = {k: getattr(train, k) for k in INHERITED if k not in self.model_fields_set
                  or (getattr(self, k) is None and not _nullable(Train.model_fields[k]))}
        # keys written in the variant win, an explicit null included (`auto_augment: null` disables it)
        own = self.augment.model_dump(exclude_unset=True) if self.augment is not None else {}
        update['augment'] = Augment.model_validate({**augment.model_dump(), **own})
        return self.model_copy(update=update)

    def model_kwargs(self) -> dict:
        """Keyword arguments for `timm.create_model(self.model, **kwargs)` (num_classes resolved)."""
        return dict(img_size=self.img_size, num_classes=self.num_classes, drop_path_rate=self.drop_path_rate)

    def micro_batch(self) -> int:
        """Images one rank runs at a time: batch_size / (world_size * grad_accum_steps)."""
        return self.batch_size // (self.world_size * self.grad_accum_steps)

    def scaled_lr(self) -> float:
        """The peak learning rate of this run, linearly scaled from `lr_base_batch` when set."""
        return self.lr if self.lr_base_batch is None else self.lr * self.batch_size / self.lr_base_batch


# A variant may override every `train` field; the fields are derived from `Train`, declared once.
Variant = create_model(
    'Variant',
    __base__=_VariantBase,
    __doc__='One trainable model configuration; fields left out are taken from `train`.',
    **{name: _override(info, 'train') for name, info in Train.model_fields.items()},
)


def resolve_variant(model: str, **fields) -> Variant:
    """A resolved variant: `fields` (any variant key, `augment={...}` included) over the schema's
    `train` and `augment` defaults (tests, benchmarks, library use)."""
    return Variant(model=model, **fields).inherit(Train(), Augment())


class Runtime(_Section):
    """Where and how a training run executes: device, precision, FSDP2 sharding, recomputation, compile, and
    what happens when a rank dies or hangs."""

    device: Literal['auto', 'cpu', 'cuda'] = Field('auto', description='auto: CUDA when available (NCCL), else CPU (gloo).')
    precision: Literal['auto', 'float32', 'bfloat16'] = Field(
        'auto', description='Autocast dtype of forward/backward (the recipe\'s AMP); auto: bfloat16 on CUDA, '
        'float32 on CPU. With FSDP2 the gathered parameters take this dtype too.')
    reduce_dtype: Literal['float32', 'bfloat16'] = Field('float32', description='Dtype of the FSDP2 gradient reduce-scatter.')
    activation_checkpointing: bool = Field(False, description='Recompute block activations in backward (saves memory).')
    compile: bool | Literal['auto'] = Field(False, description='torch.compile the model (per block when sharded); '
                                            'auto: on CUDA only.')
    max_restarts: int = Field(3, ge=0, description="Restarts of a node's ranks by torchrun's elastic agent when one "
                              'of them dies (each restart resumes from the newest complete checkpoint); 0: a dead rank '
                              'ends the run. The train stage passes it as `torchrun --max-restarts`.')
    collective_timeout_s: int = Field(600, ge=1, description='Seconds a collective (all-reduce, barrier, broadcast) '
                                      'waits for the other ranks before the ranks that wait end with one line (a '
                                      'peer is hung or dead); the process group timeout.')


class Checkpoint(_Section):
    """DCP checkpoints of a training run (resumed from automatically)."""

    every_epochs: int = Field(1, ge=1, description='Save every this many epochs (and after the last).')
    keep: int = Field(2, ge=1, description='How many of the newest checkpoints of a run to keep.')
    keep_runs: int = Field(4, ge=1, description="How many runs of other settings a variant keeps resumable besides "
                           "the current one (checkpoints/<variant>/<settings hash>/); beyond it the oldest finished "
                           "runs go first, each removal logged.")


class Tracking(_Section):
    """MLflow tracking (rank 0 only)."""

    tracking_uri: str = Field('sqlite:///mlflow.db', description="MLflow store or server URI (a team's: "
                              'http://host:5000); a relative sqlite path lies in the DVC repository root, also for a '
                              'queued experiment.')
    experiment: str = Field('sgformer', min_length=1, description='MLflow experiment name.')
    system_metrics: bool = Field(True, description='Also log CPU/GPU/memory utilisation.')
    log_every_steps: int = Field(10, ge=1, description='Log train/loss, lr and img/s every this many steps.')
    register_model: bool = Field(False, description="Register each trained variant's MLflow model in the Model "
                                 'Registry under the variant name.')
    offline_dir: str = Field('.mlflow-offline', min_length=1, description='Where tracking that could not reach MLflow '
                             'waits (one folder per stage run) until `python -m pipeline.tools.replay_tracking` or '
                             'the next stage that reaches MLflow replays it; relative: to the DVC repository root.')
    timeout_s: int = Field(10, ge=1, description='Seconds an MLflow HTTP request may take (2 retries); a stage waits '
                           'at most 12 x this for MLflow at its end, then leaves the rest for replay.')


class Eval(_Section):
    """The evaluate stage: accuracy, speed, FLOPs and significance-map pictures of an export."""

    weights: Literal['ema', 'raw'] = Field('ema', description='Which exported weights to evaluate.')
    device: Literal['auto', 'cpu', 'cuda'] = Field('auto', description='auto: CUDA when available, else CPU.')
    batch_size: int = Field(64, ge=1, description='Images per batch when computing accuracy.')
    crop_pct: float = Field(0.9, gt=0, le=1, description='Val centre crop: crop side / resized short side (the '
                            "official eval transform; also the train stage's per-epoch validation).")
    speed_batch_size: int = Field(64, ge=1, description='Batch size of the throughput and latency measurement.')
    speed_steps: int = Field(10, ge=1, description='Timed forward passes (after 2 untimed ones).')
    resolutions: list[Annotated[int, Field(gt=0, multiple_of=32)]] = Field(
        [96], description='Extra square resolutions to evaluate at (the model runs at any multiple of 32).')
    num_pictures: int = Field(6, ge=1, le=64, description='Val images drawn in the significance-map grids.')


class Params(_Section):
    """The root of params.yaml."""

    sample: Sample = Sample()
    data: Data = Data()
    convert: Convert = Convert()
    loader: Loader = Loader()
    augment: Augment = Augment()
    train: Train = Train()
    runtime: Runtime = Runtime()
    checkpoint: Checkpoint = Checkpoint()
    tracking: Tracking = Tracking()
    eval: Eval = Eval()
    variants: dict[str, Variant] = Field(min_length=1, description='Name -> variant trained by the pipeline.')

    @field_validator('variants')
    @classmethod
    def _safe_names(cls, variants: dict) -> dict:
        for name in variants:
            if not VARIANT_NAME.match(name):
                suggestion = re.sub(r'[^A-Za-z0-9_-]', '_', name).lstrip('-') or 'v1'
                raise ValueError(f'variant name {name!r} may hold only letters, digits, _ and - (it names DVC '
                                 f'stages, folders and shell arguments); e.g. {suggestion!r}')
        return variants

    @model_validator(mode='after')
    def _resolve(self):
        resolved = {name: _inherit(f'variants.{name}', v, self.train, self.augment) for name, v in self.variants.items()}
        for name, v in resolved.items():
            _check_batch(f'variants.{name}', v)
            _check_progressive_resize(f'variants.{name}.progressive_resize', v)
        object.__setattr__(self, 'variants', resolved)
        return self

    def run_settings(self, name: str) -> dict[str, Any]:
        """What one variant's training run uses, as MLflow params: its resolved values, never the
        shared defaults it overrides (`train.*` and `augment.*` are the variant's own)."""
        variant = self.variants[name]
        return dict(variant=name, model=variant.model,
                    train={k: getattr(variant, k) for k in INHERITED}, augment=variant.augment.model_dump(),
                    eval=dict(crop_pct=self.eval.crop_pct),  # the per-epoch validation's crop
                    **self.model_dump(include={'data', 'loader', 'runtime', 'checkpoint'}))

    def differences(self, name: str) -> dict[str, Any]:
        """What variant `name` sets otherwise than the shared sections, as `{key: its value}`:
        `train` keys by name (`drop_path_rate`), `augment` keys dotted (`augment.auto_augment`)."""
        own, train, augment = self.variants[name].model_dump(), self.train.model_dump(), self.augment.model_dump()
        return {**{k: own[k] for k in INHERITED if own[k] != train[k]},
                **{f'augment.{k}': v for k, v in own['augment'].items() if v != augment[k]}}


def _inherit(key: str, variant, train: Train, augment: Augment):
    try:
        return variant.inherit(train, augment)
    except ValidationError as e:
        err = e.errors()[0]
        raise _KeyError(f"{key}.augment.{_dotted(err['loc'])}", err['msg']) from None


def _check_batch(variant_key: str, v: Variant) -> None:
    key = f'{variant_key}.batch_size'
    if v.batch_size % v.world_size:
        raise _KeyError(key, f'{v.batch_size} is not divisible by world_size {v.world_size}')
    per_rank = v.batch_size // v.world_size
    if v.augment.mixing and per_rank % 2:
        raise _KeyError(key, f'{v.batch_size} / world_size {v.world_size} is odd; mixup/cutmix pair samples '
                        'and need an even batch per rank')
    if per_rank % v.grad_accum_steps:
        raise _KeyError(f'{variant_key}.grad_accum_steps', f'{v.grad_accum_steps} does not divide the batch per rank '
                        f'({v.batch_size} / world_size {v.world_size} = {per_rank})')


def _check_progressive_resize(key: str, v: Variant) -> None:
    ramp = v.progressive_resize
    if ramp is None:
        return
    if ramp.min_size > v.img_size:
        raise _KeyError(f'{key}.min_size', f'{ramp.min_size} is above img_size {v.img_size}')
    last = v.epochs - 1  # epochs count from 0
    if ramp.start_ramp > last:
        raise _KeyError(f'{key}.start_ramp', f'{ramp.start_ramp} is past the last epoch, {last} (epochs: {v.epochs})')
    if ramp.start_ramp > ramp.end_ramp:
        raise _KeyError(f'{key}.start_ramp', f'{ramp.start_ramp} is after end_ramp {ramp.end_ramp}')
    if ramp.end_ramp > last:
        raise _KeyError(f'{key}.end_ramp', f'{ramp.end_ramp} is past the last epoch, {last} (epochs: {v.epochs}): '
                        'the run would end below img_size')


class _KeyError(ValueError):
    """A cross-field error that belongs to one dotted key."""

    def __init__(self, key: str, reason: str):
        super().__init__(reason)
        self.key, self.reason = key, reason


def _dotted(loc: tuple) -> str:
    return '.'.join(str(part) for part in loc) or '<root>'


def _messages(path: Path, error: ValidationError) -> list[str]:
    lines = []
    for err in error.errors():
        cause = (err.get('ctx') or {}).get('error')
        if isinstance(cause, _KeyError):
            lines.append(f'{path}: {cause.key}: {cause.reason}')
        else:
            lines.append(f"{path}: {_dotted(err['loc'])}: {err['msg']}")
    return lines


def load_params(path: str | Path = 'params.yaml') -> Params:
    """Read and validate a params file.

    Args:
        path: the YAML file.

    Returns:
        The validated parameters; every variant already carries the inherited `train` values.

    Raises:
        ConfigError: the file is missing, is not YAML, or breaks the schema; the message names
            the file, each bad dotted key and why.
    """
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f'{path}: file not found') from None
    except yaml.YAMLError as e:
        raise ConfigError(f'{path}: not valid YAML: {e}') from None
    if raw is not None and not isinstance(raw, dict):
        raise ConfigError(f'{path}: expected a mapping of sections, got {type(raw).__name__}')
    try:
        return Params.model_validate(raw or {})
    except ValidationError as e:
        raise ConfigError('\n'.join(_messages(path, e))) from None


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    usage = 'usage: python -m sgformer.config check [params.yaml] | get <dotted key> [params.yaml]'
    command, args = (argv[0], argv[1:]) if argv else (None, [])
    if command not in ('check', 'get') or command == 'get' and not args:
        print(usage, file=sys.stderr)
        return 2
    key = args.pop(0) if command == 'get' else None
    path = args[0] if args else 'params.yaml'
    try:
        resolved = load_params(path).model_dump(mode='json')
    except ConfigError as e:
        print(f'error: {e}', file=sys.stderr)
        return 1
    if key is None:
        print(yaml.safe_dump(resolved, sort_keys=False), end='')
        return 0
    value = resolved
    for part in key.split('.'):
        if not isinstance(value, dict) or part not in value:
            print(f'error: {path}: {key}: no such key', file=sys.stderr)
            return 1
        value = value[part]
    if isinstance(value, (dict, list)):
        print(yaml.safe_dump(value, sort_keys=False), end='')
    else:  # a scalar as a shell reads it: 3, true, null, data/sample
        print(value if isinstance(value, str) else json.dumps(value))
    return 0


if __name__ == '__main__':
    sys.exit(main())
