"""One command for a bare one-GPU machine: this SG-Former against the official code, the production
training step, the batch augmentation, evaluation speed and the host work of one step, all in one
process, so that the ratios compare numbers of the same run. Prints one markdown table and the issue's
targets; writes JSON (atomically, after every section, so a run killed midway leaves what it had).

    PYTHONPATH=. python benchmarks/gpu_check.py --official /path/to/SG-Former      # one GPU, meant for < 8 min
    PYTHONPATH=. python benchmarks/gpu_check.py                                    # ours only
    PYTHONPATH=. python benchmarks/gpu_check.py --smoke [--official PATH]          # CPU, tiny, < 2 min

What it measures (CUDA: bf16 autocast, train batch 128, inference batch 256, 224 px; timing with
`sgformer.eval.metrics.timed`, synchronised, median of rounds):

1. Bare model step of ours and the official code for --models (sgformer_s; sgformer_m, sgformer_b
   while --budget-s allows), eager and compiled (`model.compile(dynamic=False)`): forward + backward
   under autocast, `torch.optim.AdamW(fused=True)` step, zero_grad, on float inputs. Train and
   inference (`torch.inference_mode`) img/s, steady peak GiB of each (`max_memory_allocated` after
   `reset_peak_memory_stats`), wall seconds of the first compiled train step and of the first
   compiled inference call (compilation included). The official compiled sgformer_s, which no
   target needs, runs after sections 2-5.
2. Production step: `Trainer.train_step` of sgformer_s with the official recipe (RandAugment
   rand-m9-mstd0.5-inc1, random erasing 0.25, mixup 0.8 / cutmix 1.0, smoothing 0.1, drop path 0.1,
   grad clip 1, EMA 0.99992, torch.compile) on uint8 batches already on the GPU, rounds of 10 steps
   with one synchronisation each (the step never waits for the device). `production_vs_bare` is its
   img/s over the bare compiled sgformer_s step of section 1, timed in alternating rounds (CPU: the
   bare eager step, nothing compiles there).
3. Augmentation ms per batch: `TrainTransform` alone, official and demo (`Augment()`) settings.
4. Evaluation img/s: the production trainer's EMA model (compiled as the trainer compiles it) via
   `sgformer.eval.metrics.measure_speed`, and the official model, eager, the same way.
5. `outside_model_ops`: one `train_step` of eager trainers of sgformer_nano and sgformer_s at two
   batch sizes, official augmentation, under torch.profiler (CPU activity): the ops dispatched
   directly in the ranges `train_step/augment|guard|optimizer|ema|stats` (not inside another op;
   forward and backward are the model's). This host work should not grow with the number of
   parameter tensors or with the batch size. Counted at 64 px: op counts do not depend on the
   resolution.

`--smoke`: the same on CPU at tiny sizes, in under 2 minutes on 2 cores: sgformer_nano, 64 px, batch
64, eager, the demo augmentation for the production step (the issue's CPU target: production >= 0.9x
the bare step). The official code runs only at 224 px (its token-merging layers are sized for 56 x 56
stage-1 maps; 64 and 112 px fail), so with --official the smoke run times ours and official
sgformer_s once at 224 px, batch 2, eager: a check that the official code path works, not a speed
comparison.

Offline dependencies: torch, timm (with torchvision, pyyaml, huggingface_hub, safetensors), numpy,
tqdm, and for sgformer's config and Trainer pydantic and pyyaml. Nothing imports mlflow, ffcv or dvc
(the JSON's `forbidden_imports` checks). Fill a wheel folder on a networked machine for the GPU
machine's Python (ask it: `python -c 'import sys; print(sys.version_info[:2])'`; 3.12 here):

    pip download pydantic==2.14.4 pyyaml --only-binary=:all: --platform manylinux2014_x86_64 \\
        --python-version 3.12 --implementation cp --abi cp312 -d wheels/
    # 6 wheels: pydantic, pydantic-core, annotated-types, typing-extensions, typing-inspection, pyyaml

copy `wheels/` and the repository over, then in the repository root there:

    pip install --no-index --find-links wheels/ pydantic pyyaml
    PYTHONPATH=. python benchmarks/gpu_check.py --official /path/to/SG-Former
"""
import argparse
import contextlib
import datetime
import gc
import itertools
import platform
import statistics
import sys
import tempfile
import time
import traceback
import warnings
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from functools import cache
from pathlib import Path

import timm
import torch
import torch.nn.functional as F
from torch.profiler import ProfilerActivity, profile

from sgformer.config import Augment, Checkpoint, Runtime, resolve_variant
from sgformer.augment.transforms import TrainTransform
from sgformer.eval.metrics import measure_speed, timed
from sgformer.io import write_json_atomic
from sgformer.runtime import apply_compile, autocast
from sgformer.train.distributed import init_distributed
from sgformer.train.trainer import Trainer

OFFICIAL_AUGMENT = dict(auto_augment='rand-m9-mstd0.5-inc1', reprob=0.25, mixup=0.8, cutmix=1.0, smoothing=0.1)
AUGMENTS = {'official': OFFICIAL_AUGMENT, 'demo': {}}  # demo: the `Augment()` defaults
OUTSIDE_RANGES = ('augment', 'guard', 'optimizer', 'ema', 'stats')  # train_step/... ranges outside the model
OFFICIAL_MODELS = ('sgformer_s', 'sgformer_m', 'sgformer_b')
FORBIDDEN = ('mlflow', 'ffcv', 'dvc')
# Rough cost of comparing a model, relative to sgformer_s (blocks x width; compile time dominates).
RELATIVE_COST = {'sgformer_nano': 0.3, 'sgformer_tiny': 0.5, 'sgformer_s': 1.0, 'sgformer_m': 1.7, 'sgformer_b': 2.2}


@dataclass(frozen=True)
class Settings:
    device: str
    compile: bool
    models: tuple[str, ...]  # compared with the official code; the first is the production model
    img_size: int
    batch: int
    infer_batch: int
    production_augment: str  # a key of AUGMENTS
    drop_path: float
    ema_decay: float
    op_models: tuple[str, ...]
    op_batches: tuple[int, ...]
    op_img_size: int
    warmup: int  # untimed calls before timing (the first compiles)
    steps: int  # calls per timed round (one synchronisation per round)
    rounds: int  # timed rounds; the median round counts
    eval_steps: int
    num_classes: int = 1000

    @property
    def dtype(self) -> torch.dtype:
        return torch.bfloat16 if self.device == 'cuda' else torch.float32


GPU = Settings(device='cuda', compile=True, models=OFFICIAL_MODELS, img_size=224, batch=128, infer_batch=256,
               production_augment='official', drop_path=0.1, ema_decay=0.99992,
               op_models=('sgformer_nano', 'sgformer_s'), op_batches=(64, 128), op_img_size=64,
               warmup=3, steps=10, rounds=3, eval_steps=10)
SMOKE = Settings(device='cpu', compile=False, models=('sgformer_nano',), img_size=64, batch=64, infer_batch=128,
                 production_augment='demo', drop_path=0.0, ema_decay=0.99,
                 op_models=('sgformer_nano', 'sgformer_s'), op_batches=(8, 32), op_img_size=64,
                 warmup=2, steps=1, rounds=9, eval_steps=5)
# --smoke --official: the official code only runs at 224 px, so it is only exercised there, small.
SMOKE_OFFICIAL_CHECK = dict(models=('sgformer_s',), img_size=224, batch=2, infer_batch=4, warmup=0, steps=1, rounds=1)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--official', type=Path, help='checkout of the official SG-Former repository (sgformer.py, '
                   'pos_embed.py); without it only this implementation is measured')
    p.add_argument('--smoke', action='store_true', help='CPU, tiny sizes, eager, < 2 min on 2 cores')
    p.add_argument('--models', nargs='+', choices=tuple(RELATIVE_COST), metavar='MODEL',
                   help=f'models of the bare-step comparison (default: {" ".join(GPU.models)}; smoke: '
                   f'{" ".join(SMOKE.models)}); sgformer_s (smoke: sgformer_nano) is always measured first')
    p.add_argument('--compile', action=argparse.BooleanOptionalAction,
                   help='also time compiled models and compile the production trainer (default: on CUDA, off in smoke)')
    p.add_argument('--rounds', type=int,
                   help=f'timed rounds per measurement (default: {GPU.rounds}; smoke: {SMOKE.rounds})')
    p.add_argument('--budget-s', type=float, default=420.0,
                   help='wall-time budget: models after the first are skipped when the run would exceed it')
    p.add_argument('--out', type=Path, default=Path(__file__).parent / 'results' / 'gpu_check.json', help='JSON output')
    return p.parse_args(argv)


def settings_from(args) -> Settings:
    base = SMOKE if args.smoke else GPU
    models = tuple(dict.fromkeys((base.models[0], *(args.models or base.models))))
    updates = dict(models=models)
    if args.compile is not None:
        updates['compile'] = args.compile
    if args.rounds:
        updates['rounds'] = args.rounds
    return replace(base, **updates)


# --- the run: results, sections, time budget -----------------------------------------------------

@dataclass
class Run:
    out: Path
    budget_s: float
    tmp: str  # checkpoint_dir of the trainers (they never save)
    started: float = field(default_factory=time.perf_counter)
    results: dict = field(default_factory=dict)

    def elapsed(self) -> float:
        return time.perf_counter() - self.started

    def within_budget(self, what: str, estimate_s: float) -> bool:
        """Whether `what` (~`estimate_s` seconds) still fits in --budget-s; notes a skip."""
        if self.elapsed() + estimate_s <= self.budget_s:
            return True
        self.note(f'skipped {what}: {self.elapsed():.0f} s elapsed + ~{estimate_s:.0f} s estimated > '
                  f'--budget-s {self.budget_s:.0f}')
        return False

    def note(self, message: str) -> None:
        self.results.setdefault('notes', []).append(message)
        log(message)

    @contextlib.contextmanager
    def section(self, name: str):
        """Run one measurement; an exception is recorded (and the exit status set), the run goes on."""
        log(f'[{self.elapsed():5.0f} s] {name} ...')
        started = time.perf_counter()
        try:
            yield
        except Exception as e:  # noqa: BLE001  (a failed section must not lose the others)
            self.results.setdefault('errors', {})[name] = f'{type(e).__name__}: {e}'
            log(traceback.format_exc())
        finally:
            self.results.setdefault('section_s', {})[name] = round(time.perf_counter() - started, 1)
            free()
            self.save()

    def save(self) -> None:
        self.results['wall_s'] = round(self.elapsed(), 1)
        self.results['forbidden_imports'] = sorted(m for m in FORBIDDEN if m in sys.modules)
        write_json_atomic(self.out, self.results)


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def free() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def reset_peak(device: torch.device) -> None:
    if device.type == 'cuda':
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)


def peak_gib(device: torch.device) -> float | None:
    """Peak allocated GiB since `reset_peak` (CUDA); None on CPU."""
    return torch.cuda.max_memory_allocated(device) / 2 ** 30 if device.type == 'cuda' else None


def resident_gib(device: torch.device) -> float:
    return torch.cuda.memory_allocated(device) / 2 ** 30 if device.type == 'cuda' else 0.0


def alternate(fns: dict[str, Callable[[], object]], s: Settings, device: torch.device) -> dict[str, float]:
    """Seconds per call of each function: `s.warmup` untimed calls each, then `s.rounds` rounds of
    `s.steps` calls with one synchronisation (`timed`), the functions taking turns round by round so
    that they share the machine's noise; the median round counts."""
    for fn in fns.values():
        for _ in range(s.warmup):
            fn()
    rounds = {name: [] for name in fns}
    for _ in range(s.rounds):
        for name, fn in fns.items():
            rounds[name].append(timed(lambda: [fn() for _ in range(s.steps)], device) / s.steps)
    return {name: statistics.median(seconds) for name, seconds in rounds.items()}


def seconds_per_call(fn: Callable[[], object], s: Settings, device: torch.device) -> float:
    return alternate({'fn': fn}, s, device)['fn']


# --- models ----------------------------------------------------------------------------------------

@cache
def official_module(checkout: Path):
    """The official `sgformer.py`, loaded once. Its `@register_model` overwrites our timm names, so ours
    are registered again (the trainer builds its model with `timm.create_model`)."""
    from bench_vs_official import load_official  # this folder is on sys.path when a script in it runs
    from timm.models import register_model

    from sgformer.models import sgformer as ours
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        module = load_official(checkout)
        for name in OFFICIAL_MODELS:
            register_model(getattr(ours, name))
    return module


def build_model(source: str, name: str, s: Settings, official: Path | None) -> torch.nn.Module:
    if source == 'official':
        model = getattr(official_module(official), name)(num_classes=s.num_classes, drop_path_rate=s.drop_path)
    else:
        model = timm.create_model(name, img_size=s.img_size, num_classes=s.num_classes, drop_path_rate=s.drop_path)
        assert type(model).__module__.startswith('sgformer.'), f'{name} is not this implementation'
    return model.to(s.device)


def bare_train_step(model, s: Settings, device: torch.device) -> Callable[[], None]:
    """The bare model step: forward + backward under autocast, fused AdamW step, zero_grad."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)
    x = torch.randn(s.batch, 3, s.img_size, s.img_size, device=device)
    y = torch.randint(0, s.num_classes, (s.batch,), device=device)

    def step():
        with autocast(device, s.dtype):
            loss = F.cross_entropy(model(x), y)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step


def inference_call(model, s: Settings, device: torch.device) -> Callable[[], None]:
    x = torch.randn(s.infer_batch, 3, s.img_size, s.img_size, device=device)

    def call():
        with torch.inference_mode(), autocast(device, s.dtype):
            model(x)

    return call


def time_first_then_steady(fn, s: Settings, device: torch.device) -> tuple[float, float, float | None]:
    """(seconds of the first call, steady seconds per call, steady peak GiB)."""
    first = timed(fn, device)
    reset_peak(device)
    return first, seconds_per_call(fn, s, device), peak_gib(device)


def measure_bare(model, s: Settings, device: torch.device) -> dict:
    """Train and inference img/s and peak GiB of `model` (compiled or not) in the bare step."""
    model.train()
    first_train, train_s, train_peak = time_first_then_steady(bare_train_step(model, s, device), s, device)
    free()
    model.eval()
    first_infer, infer_s, infer_peak = time_first_then_steady(inference_call(model, s, device), s, device)
    model.train()
    return dict(train_img_s=s.batch / train_s, infer_img_s=s.infer_batch / infer_s, train_peak_gib=train_peak,
                infer_peak_gib=infer_peak, first_train_step_s=first_train, first_infer_call_s=first_infer)


def measure_compiled(model, s: Settings, device: torch.device) -> dict:
    """`measure_bare` of the compiled model; a failing compile is recorded, not raised."""
    try:
        apply_compile(model)  # model.compile(dynamic=False), with room for one graph per block kind and mode
        result = measure_bare(model, s, device)
    except Exception as e:  # noqa: BLE001
        log(traceback.format_exc())
        return {'error': f'{type(e).__name__}: {e}'[:2000]}
    result['compile_train_s'] = result.pop('first_train_step_s')
    result['compile_infer_s'] = result.pop('first_infer_call_s')
    return result


def measure_source(source: str, name: str, s: Settings, official: Path | None,
                   kinds: tuple[str, ...] = ('eager', 'compiled')) -> tuple[dict, torch.nn.Module]:
    """Bare-step numbers of one implementation, eager then compiled (`kinds`, compiled only with
    `s.compile`); peaks count from what was resident before its model was built. Returns them and the
    model (compiled when that was measured and worked)."""
    device = torch.device(s.device)
    before = resident_gib(device)
    model = build_model(source, name, s, official)
    result = {}
    if 'eager' in kinds:
        result['eager'] = measure_bare(model, s, device)
        free()
    if 'compiled' in kinds and s.compile:
        result['compiled'] = measure_compiled(model, s, device)
    for entry in result.values():
        for key in ('train_peak_gib', 'infer_peak_gib'):
            if entry.get(key) is not None:
                entry[key] -= before
    return result, model


def compare_model(name: str, s: Settings, official: Path | None, keep: bool = False,
                  official_kinds: tuple[str, ...] = ('eager', 'compiled')) -> tuple[dict, tuple | None]:
    """`{source: {'eager': ..., 'compiled': ...}}` for ours and, with a checkout, the official code; a
    failure of one implementation is recorded as its `error`.

    With `keep`, also returns `(our model, 'compiled' | 'eager')`, compiled when that worked: the
    reference the production step is timed against."""
    result, reference = {}, None
    for source in ['ours'] + (['official'] if official and name in OFFICIAL_MODELS else []):
        try:
            kinds = official_kinds if source == 'official' else ('eager', 'compiled')
            result[source], model = measure_source(source, name, s, official, kinds)
        except Exception as e:  # noqa: BLE001
            log(traceback.format_exc())
            result[source] = {'error': f'{type(e).__name__}: {e}'[:2000]}
            continue
        if keep and source == 'ours':
            compiled = 'error' not in result[source].get('compiled', {'error': 'not compiled'})
            reference = (model, 'compiled') if compiled else (build_model(source, name, s, official), 'eager')
        del model
        free()
    if official and name not in OFFICIAL_MODELS:
        result['official'] = {'note': f'the official code has no {name}'}
    return result, reference


# --- the production step -------------------------------------------------------------------------

@cache
def dist_info(device: str):
    return init_distributed(device)


def build_trainer(model: str, s: Settings, *, augment: str, batch: int, img_size: int, compile: bool,
                  checkpoint_dir: str) -> Trainer:
    variant = resolve_variant(model, img_size=img_size, num_classes=s.num_classes, batch_size=batch,
                              drop_path_rate=s.drop_path, grad_clip=1.0, ema_decay=s.ema_decay,
                              augment=AUGMENTS[augment])
    return Trainer(variant, runtime=Runtime(device=s.device, compile=compile), checkpoint=Checkpoint(),
                   dist_info=dist_info(s.device), steps_per_epoch=1000, checkpoint_dir=checkpoint_dir)


def uint8_batch(batch: int, img_size: int, s: Settings) -> tuple[torch.Tensor, torch.Tensor]:
    images = torch.randint(0, 256, (batch, 3, img_size, img_size), dtype=torch.uint8, device=s.device)
    return images, torch.randint(0, s.num_classes, (batch,), device=s.device)


def start_production(run: Run, s: Settings, compile: bool) -> tuple[Trainer, Callable[[], None], float, float | None]:
    """A production trainer on uint8 batches on the device: `(trainer, step, seconds of the first step
    (compilation included), steady peak GiB over what was resident before it)`, warmed up."""
    device = torch.device(s.device)
    before = resident_gib(device)  # the reference model
    trainer = build_trainer(s.models[0], s, augment=s.production_augment, batch=s.batch, img_size=s.img_size,
                            compile=compile, checkpoint_dir=run.tmp)
    images, labels = uint8_batch(s.batch, s.img_size, s)
    step = lambda: trainer.train_step(images, labels)  # noqa: E731  (asynchronous: launches work only)
    first = timed(step, device)
    reset_peak(device)
    for _ in range(s.warmup):
        step()
    peak = peak_gib(device)
    return trainer, step, first, None if peak is None else peak - before


def measure_production(run: Run, s: Settings, reference: tuple | None) -> Trainer:
    """Section 2: `Trainer.train_step`, alternating round by round with the bare step of `reference`
    (the production model of section 1). A failing compile falls back to eager trainer and reference."""
    compiled = s.compile
    try:
        trainer, step, first, peak = start_production(run, s, compiled)
    except Exception as e:  # noqa: BLE001
        if not compiled:
            raise
        log(traceback.format_exc())
        run.results['production_compile_error'] = f'{type(e).__name__}: {e}'[:2000]
        compiled = False
        free()
        trainer, step, first, peak = start_production(run, s, compiled)
        if reference is not None and reference[1] == 'compiled':
            reference = (build_model('ours', s.models[0], s, None), 'eager')
    device = torch.device(s.device)
    steps = {'production': step} | ({'bare': bare_train_step(reference[0], s, device)} if reference else {})
    seconds = alternate(steps, s, device)
    result = dict(model=s.models[0], augment=s.production_augment, compiled=compiled,
                  img_s=s.batch / seconds['production'], peak_gib=peak, first_step_s=first)
    if reference is not None:
        result['bare_reference'] = dict(kind=reference[1], img_s=s.batch / seconds['bare'])
        run.results['production_vs_bare'] = seconds['bare'] / seconds['production']
    result['host_ms_per_range'] = range_ms(profile_step(step))  # one step, under the profiler
    run.results['production'] = result
    return trainer


def measure_eval(run: Run, s: Settings, trainer: Trainer, official: Path | None) -> None:
    """Section 4: the production trainer's EMA model (compiled as the trainer compiled it) and the
    official model, eager, through `measure_speed`."""
    device = torch.device(s.device)
    speed = dict(batch_size=s.infer_batch, img_size=s.img_size, steps=s.eval_steps, device=device, dtype=s.dtype)
    ema = measure_speed(trainer.ema.module, **speed)['img_s']
    compiled = run.results.get('production', {}).get('compiled', s.compile)  # False after a compile fallback
    result = dict(model=s.models[0], ema_compiled=compiled, batch=s.infer_batch, ema_img_s=ema)
    run.results['eval'] = result
    if official and s.models[0] in OFFICIAL_MODELS:
        model = build_model('official', s.models[0], s, official)
        result['official_eager_img_s'] = measure_speed(model, **speed)['img_s']
        result['ratio'] = ema / result['official_eager_img_s']


# --- augmentation alone ------------------------------------------------------------------------------

def measure_augment(run: Run, s: Settings) -> None:
    """Section 3: `TrainTransform` alone, synchronised around every call."""
    device = torch.device(s.device)
    images, labels = uint8_batch(s.batch, s.img_size, s)
    per_call = replace(s, steps=1, rounds=max(s.rounds, 5))
    result = {}
    for name, augment in AUGMENTS.items():
        transform = TrainTransform(Augment(**augment), num_classes=s.num_classes, seed=0, device=device)
        index = itertools.count()
        result[name] = 1000 * seconds_per_call(lambda: transform(images, labels, index=next(index)), per_call, device)
    run.results['augment_ms'] = dict(result, batch=s.batch, img_size=s.img_size)


# --- host work of one step ------------------------------------------------------------------------

def is_op(event) -> bool:
    """A dispatched operator (`aten::add`, ...), not a profiler range or the profiler's own bookkeeping."""
    return '::' in event.name and not event.name.startswith(('profiler::', 'autograd::'))


def profile_step(step: Callable[[], None]):
    """The profiler's events (CPU activity, with their `cpu_parent` tree) of one call of `step`."""
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        step()
    return prof.events()


def range_ms(events) -> dict[str, float]:
    """Host milliseconds of each `train_step/<range>` (on CPU that includes the computation)."""
    return {e.name.removeprefix('train_step/'): e.cpu_time_total / 1000 for e in events
            if e.name.startswith('train_step/')}


def outside_op_counts(events) -> dict:
    """Per `train_step/<range>` outside the model, the ops whose nearest enclosing range it is and
    that do not run inside another op (walking the event tree's `cpu_parent`)."""
    per_range = {name: Counter() for name in OUTSIDE_RANGES}
    for event in events:
        if not is_op(event):
            continue
        parent = event.cpu_parent
        while parent is not None and not is_op(parent) and not parent.name.startswith('train_step/'):
            parent = parent.cpu_parent  # through user ranges such as Optimizer.step#AdamW.step
        if parent is not None and not is_op(parent):
            range_name = parent.name.removeprefix('train_step/')
            if range_name in per_range:
                per_range[range_name][event.name] += 1
    return dict(total=sum(sum(c.values()) for c in per_range.values()),
                ranges={name: sum(c.values()) for name, c in per_range.items()},
                top_ops={name: dict(c.most_common(4)) for name, c in per_range.items()})


def op_counts(run: Run, s: Settings, model: str, batch: int, warmup_steps: int) -> dict:
    """`outside_op_counts` of one step of an eager trainer, official augmentation, after `warmup_steps`."""
    trainer = build_trainer(model, s, augment='official', batch=batch, img_size=s.op_img_size, compile=False,
                            checkpoint_dir=run.tmp)
    images, labels = uint8_batch(batch, s.op_img_size, s)
    for _ in range(warmup_steps):
        trainer.train_step(images, labels)
    return outside_op_counts(profile_step(lambda: trainer.train_step(images, labels)))


def measure_outside_ops(run: Run, s: Settings) -> None:
    """Section 5, on eager trainers (the compiled forward and backward are not counted anyway)."""
    warmup_steps = 1  # the first optimizer step also creates its state: profile the next one
    counts = {}
    for model in s.op_models:
        for batch in s.op_batches:
            counts.setdefault(model, {})[str(batch)] = op_counts(run, s, model, batch, warmup_steps)
            free()
    totals = {m: {b: c['total'] for b, c in by_batch.items()} for m, by_batch in counts.items()}
    run.results['outside_model_ops'] = dict(
        counts=counts, totals=totals,
        constant_across_batches=all(len(set(t.values())) == 1 for t in totals.values()),
        constant_across_models=all(len({totals[m][b] for m in totals}) == 1 for b in map(str, s.op_batches)),
        img_size=s.op_img_size, augment='official', eager=True, profiled_step=warmup_steps,
        note=f'ops per train_step outside forward/backward, profiled at {s.op_img_size} px: op counts do not '
             'depend on the resolution; the same step index (same augmentation draws) in every trainer')


# --- targets, table -------------------------------------------------------------------------------

def target(value, threshold, what: str, at_least: bool = True) -> dict | None:
    if value is None:
        return None
    met = value >= threshold if at_least else value <= threshold
    return dict(met=bool(met), value=value, threshold=threshold, what=what)


def evaluate_targets(results: dict, s: Settings) -> dict:
    """The issue's targets that this run measured, as booleans with their numbers."""
    production = results.get('production') or {}
    ops = results.get('outside_model_ops') or {}
    kind = (production.get('bare_reference') or {}).get('kind', '?')
    targets = dict(
        production_vs_bare=target(results.get('production_vs_bare'), 0.9,
                                  f'production step >= 0.9x the bare {kind} step of {s.models[0]}'),
        ops_constant_across_batches=target(ops.get('constant_across_batches'), True,
                                           f'outside_model_ops equal at batch {" and ".join(map(str, s.op_batches))}'),
        ops_constant_across_models=target(ops.get('constant_across_models'), True,
                                          f'outside_model_ops equal for {" and ".join(s.op_models)}'),
    )
    official = (results.get('models', {}).get(s.models[0], {}).get('official') or {}).get('eager')
    if s.device == 'cuda' and official and production.get('img_s'):
        targets.update(
            production_vs_official_train=target(production['img_s'] / official['train_img_s'], 2.0,
                                                'production step img/s >= 2x the official bare eager step'),
            peak_vs_official=target(production['peak_gib'] / official['train_peak_gib'], 0.5,
                                    'production step peak <= 50 % of the official bare eager step', at_least=False),
            eval_vs_official=target((results.get('eval') or {}).get('ratio'), 2.4,
                                    'eval img/s (EMA, as the trainer compiles it) >= 2.4x the official model eager'),
        )
    return {k: v for k, v in targets.items() if v is not None}


COLUMNS = ('measurement', 'ours eager', 'ours compiled', 'official eager', 'official compiled', 'ratio')


def fmt(value, digits: int = 1) -> str:
    return '—' if value is None else f'{value:,.{digits}f}'


def times(a, b) -> str | None:
    return f'{a / b:.2f}x' if a is not None and b else None


def row(label: str, cells: dict[str, str | None], ratio: str | None = None) -> list[str]:
    return [label, *(cells.get(c) or '—' for c in COLUMNS[1:-1]), ratio or '—']


def model_rows(label: str, entry: dict, with_ratio: bool = True) -> list[list[str]]:
    """Section 1 rows of one model: each quantity for ours / official, eager / compiled, and their ratios."""
    runs = {f'{source} {kind}': (entry.get(source) or {}).get(kind) or {}
            for source in ('ours', 'official') for kind in ('eager', 'compiled')}
    rows = []
    quantities = (('train_img_s', 'bare train img/s', 1), ('infer_img_s', 'inference img/s', 1),
                  ('train_peak_gib', 'bare train peak GiB', 2), ('infer_peak_gib', 'inference peak GiB', 2))
    for key, what, digits in quantities:
        values = {column: r.get(key) for column, r in runs.items()}
        if any(v is not None for v in values.values()):
            ratios = [f'{kind} {r}' for kind in ('eager', 'compiled')
                      if (r := times(values[f'ours {kind}'], values[f'official {kind}']))]
            cells = {c: fmt(v, digits) for c, v in values.items() if v is not None}
            rows.append(row(f'{label} {what}', cells, ', '.join(ratios) if with_ratio else None))
    compiled = {c: r for c, r in runs.items() if c.endswith('compiled') and r}
    if compiled:
        rows.append(row(f'{label} compile s (first train step / first inference call)', {
            c: 'failed (see JSON)' if 'error' in r else f"{fmt(r['compile_train_s'])} / {fmt(r['compile_infer_s'])}"
            for c, r in compiled.items()}))
    return rows


def production_rows(results: dict) -> list[list[str]]:
    p, e = results.get('production'), results.get('eval')
    rows = []
    if p:
        column = 'ours compiled' if p['compiled'] else 'ours eager'
        official = ((results.get('models', {}).get(p['model']) or {}).get('official') or {}).get('eager') or {}
        bare = p.get('bare_reference') or {}
        ratio = [f"{results['production_vs_bare']:.2f}x the bare {bare['kind']} step ({fmt(bare['img_s'])} img/s, "
                 'alternated)'] if bare else []
        if official:
            ratio.append(f"{times(p['img_s'], official['train_img_s'])} official eager")
        cells = {column: fmt(p['img_s']), 'official eager': fmt(official.get('train_img_s'))}
        rows.append(row(f"production step {p['model']} img/s ({p['augment']} augmentation)", cells, '; '.join(ratio)))
        if p['peak_gib'] is not None:
            rows.append(row(f"production step {p['model']} peak GiB",
                            {column: fmt(p['peak_gib'], 2), 'official eager': fmt(official.get('train_peak_gib'), 2)},
                            times(p['peak_gib'], official.get('train_peak_gib'))))
    if e:
        column = 'ours compiled' if e['ema_compiled'] else 'ours eager'
        rows.append(row(f"eval img/s, {e['model']} EMA model (measure_speed, batch {e['batch']})",
                        {column: fmt(e['ema_img_s']), 'official eager': fmt(e.get('official_eager_img_s'))},
                        times(e['ema_img_s'], e.get('official_eager_img_s'))))
    return rows


def other_rows(results: dict) -> list[list[str]]:
    rows = []
    if a := results.get('augment_ms'):
        rows.append(row(f"augmentation ms per batch of {a['batch']} at {a['img_size']} px (official / demo)",
                        {'ours eager': f"{fmt(a['official'], 2)} / {fmt(a['demo'], 2)}"}))
    if ops := results.get('outside_model_ops'):
        for model, by_batch in ops['totals'].items():
            rows.append(row(f"outside-model ops per step, {model} (batch {' / '.join(by_batch)})",
                            {'ours eager': ' / '.join(map(str, by_batch.values()))}))
    return rows


def table(results: dict) -> str:
    rows = [r for name, entry in results.get('models', {}).items() for r in model_rows(name, entry)]
    if 'official_check' in results:
        rows += model_rows('sgformer_s @224 px batch 2 (code-path check, not a speed comparison)',
                           results['official_check'], with_ratio=False)
    rows += production_rows(results) + other_rows(results)
    lines = ['| ' + ' | '.join(COLUMNS) + ' |', '|' + '---|' * len(COLUMNS)]
    return '\n'.join(lines + ['| ' + ' | '.join(r) + ' |' for r in rows])


def target_lines(targets: dict) -> str:
    lines = []
    for t in targets.values():
        value = t['value'] if isinstance(t['value'], bool) else f"{t['value']:.2f}"
        lines.append(f"- [{'x' if t['met'] else ' '}] {t['what']}: {value}")
    return '\n'.join(lines) or '- (no target measurable in this run)'


# --- main ------------------------------------------------------------------------------------------

def describe(s: Settings, args) -> dict:
    device = torch.cuda.get_device_name() if s.device == 'cuda' else (platform.processor() or platform.machine())
    return dict(date=datetime.date.today().isoformat(), command=' '.join(sys.argv), device=device,
                versions=dict(python=platform.python_version(), torch=torch.__version__, timm=timm.__version__,
                              cuda=torch.version.cuda),
                threads=torch.get_num_threads(), settings=asdict(s) | dict(dtype=str(s.dtype)),
                official=str(args.official) if args.official else None, budget_s=args.budget_s)


def official_checkout(run: Run, args) -> Path | None:
    if not args.official:
        run.note('official not measured (no --official)')
        return None
    if not (args.official / 'sgformer.py').is_file():
        run.note(f'official not measured: {args.official / "sgformer.py"} not found')
        return None
    if args.smoke:
        run.note('the official code runs only at 224 px (not at 64 or 112): the smoke run checks its code path '
                 'at 224 px, batch 2, eager')
    return args.official


def measure_all(run: Run, s: Settings, official: Path | None, smoke: bool) -> None:
    """The sections in order of importance: what the targets need first; the official compiled step
    (no target needs it) and models after the first only while the budget allows."""
    required, optional = s.models[0], s.models[1:]
    models, reference, trainer = run.results.setdefault('models', {}), None, None
    with run.section(f'bare step {required}'):
        models[required], reference = compare_model(required, s, official, keep=True, official_kinds=('eager',))
    with run.section('production step'):
        trainer = measure_production(run, s, reference)
    with run.section('eval'):
        if trainer is None:
            raise RuntimeError('no production trainer to evaluate')
        measure_eval(run, s, trainer, official)
    del trainer, reference
    torch._dynamo.reset()
    with run.section('augmentation'):
        measure_augment(run, s)
    with run.section('outside_model_ops'):
        measure_outside_ops(run, s)
    if smoke and official:
        with run.section('official code-path check'):
            run.results['official_check'], _ = compare_model('sgformer_s', replace(s, **SMOKE_OFFICIAL_CHECK), official)
    if official and s.compile and 'eager' in models.get(required, {}).get('official', {}):
        measure_official_compiled(run, s, official)
    first_model_s = sum(v for k, v in run.results['section_s'].items() if k.endswith(f' {required}'))
    for name in optional:
        if run.within_budget(name, first_model_s * RELATIVE_COST[name] / RELATIVE_COST[required]):
            with run.section(f'bare step {name}'):
                models[name], _ = compare_model(name, s, official)
            torch._dynamo.reset()


def measure_official_compiled(run: Run, s: Settings, official: Path) -> None:
    """The official compiled step of the production model, when its estimated cost (our compile
    times) still fits in the budget."""
    name = s.models[0]
    ours = run.results['models'][name]['ours'].get('compiled', {})
    estimate = ours.get('compile_train_s', 0) + ours.get('compile_infer_s', 0)
    if run.within_budget(f'the official compiled {name}', estimate):
        with run.section(f'compiled official {name}'):
            compiled, _ = measure_source('official', name, s, official, kinds=('compiled',))
            run.results['models'][name]['official'].update(compiled)
        torch._dynamo.reset()


def report(run: Run, smoke: bool) -> None:
    results = run.results
    print(f"{results['device']}, torch {torch.__version__}, timm {timm.__version__}, "
          f"{'smoke' if smoke else 'full'} run, {run.elapsed():.0f} s")
    print(results['table'])
    print()
    print(target_lines(results['targets']))
    for message in results.get('notes', []):
        print(f'- note: {message}')
    for name, error in results.get('errors', {}).items():
        print(f'- error in {name}: {error}')
    for where, error in measurement_errors(results):
        print(f"- {where} not measured: {' '.join(error.split())[:300]}")


def measurement_errors(results: dict) -> list[tuple[str, str]]:
    """`(where, error)` of every implementation or compile that failed inside a section."""
    errors = [('production compile', results['production_compile_error'])] \
        if 'production_compile_error' in results else []
    entries = dict(results.get('models', {}), **{'code-path check': results.get('official_check') or {}})
    for name, entry in entries.items():
        for source, kinds in entry.items():
            if 'error' in kinds:
                errors.append((f'{source} {name}', kinds['error']))
            errors += [(f'{source} {name} {kind}', r['error']) for kind, r in kinds.items()
                       if isinstance(r, dict) and 'error' in r]
    return errors


def main(argv=None) -> int:
    args = parse_args(argv)
    warnings.filterwarnings('ignore')
    s = settings_from(args)
    if s.device == 'cuda' and not torch.cuda.is_available():
        sys.exit('error: no CUDA device here; run with --smoke for the CPU check')
    with tempfile.TemporaryDirectory() as tmp:
        run = Run(args.out, args.budget_s, tmp)
        run.results.update(describe(s, args), production_vs_bare=None, outside_model_ops=None)
        measure_all(run, s, official_checkout(run, args), args.smoke)
    run.results['targets'] = evaluate_targets(run.results, s)
    run.results['table'] = table(run.results)
    run.save()
    report(run, args.smoke)
    return 1 if run.results.get('errors') else 0


if __name__ == '__main__':
    sys.exit(main())
