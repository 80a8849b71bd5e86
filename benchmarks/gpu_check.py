"""One command for a bare one-GPU machine: this SG-Former against the official code, the production
training step, the batch augmentation, evaluation speed and the host work of one step, all in one
process, so that the ratios compare numbers of the same run. Prints one markdown table and the issue's
targets; writes JSON (atomically, after every section, so a run killed midway leaves what it had).

    PYTHONPATH=. python benchmarks/gpu_check.py --official /path/to/SG-Former      # one GPU, meant for < 8 min
    PYTHONPATH=. python benchmarks/gpu_check.py                                    # ours only
    PYTHONPATH=. python benchmarks/gpu_check.py --smoke [--official PATH]          # CPU, tiny, < 2 min

CUDA: bf16 autocast, train batch 128, inference batch 256, 224 px. The checks, in order:
1. the bare model step of ours and the official code, eager and compiled; 2. the production step
(`Trainer.train_step`, official recipe) against the bare step, alternating; 3. the augmentation
alone; 4. evaluation speed of the EMA model; 5. the ops one step runs outside the model.
`--smoke`: the same on CPU at tiny sizes (sgformer_nano, 64 px, eager, demo augmentation).
Nothing imports mlflow, ffcv or dvc (the JSON's `forbidden_imports` checks). benchmarks/README.md
says what each number means and how to carry the dependencies to a machine without network.
"""
import argparse
import itertools
import sys
import tempfile
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from functools import cache
from pathlib import Path

import timm
import torch

from sgformer.augment.transforms import TrainTransform
from sgformer.config import Augment
from sgformer.eval.metrics import measure_speed, timed
from sgformer.train.distributed import init_distributed
from sgformer.train.trainer import Trainer

from common import (OFFICIAL_MODELS, Run, alternate_calls, create_trainer, environment, failure, free,
                    peak_allocated, profile_events, range_ms, range_op_counts, reset_peak, resident_allocated, target,
                    uint8_batch)
from gpu_check_bare import bare_step, build_model, compare_model, measure_source
from gpu_check_table import measurement_errors, table

OFFICIAL_AUGMENT = dict(auto_augment='rand-m9-mstd0.5-inc1', reprob=0.25, mixup=0.8, cutmix=1.0, smoothing=0.1)
AUGMENTS = {'official': OFFICIAL_AUGMENT, 'demo': {}}  # demo: the `Augment()` defaults
OUTSIDE_RANGES = ('augment', 'accumulate', 'guard', 'optimizer', 'ema', 'stats')  # train_step/... ranges outside the model
FORBIDDEN = ('mlflow', 'ffcv', 'dvc')
ACCUM_STEPS = 2  # gradient accumulation of the op count's last configuration
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

    @property
    def timing(self) -> dict:
        """The keyword arguments of `alternate_calls` and `first_then_steady`."""
        return dict(warmup=self.warmup, calls=self.steps, rounds=self.rounds, device=torch.device(self.device))


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
    updates = dict(models=tuple(dict.fromkeys((base.models[0], *(args.models or base.models)))))
    if args.compile is not None:
        updates['compile'] = args.compile
    if args.rounds:
        updates['rounds'] = args.rounds
    return replace(base, **updates)


# --- 2. the production step, 4. evaluation -------------------------------------------------------------

@cache
def dist_info(device: str):
    return init_distributed(device)


def build_trainer(model: str, s: Settings, *, augment: str, batch: int, img_size: int, compile: bool,
                  checkpoint_dir: str, grad_accum_steps: int = 1) -> Trainer:
    return create_trainer(model, device=s.device, compile=compile, dist_info=dist_info(s.device), steps_per_epoch=1000,
                          checkpoint_dir=checkpoint_dir, img_size=img_size, num_classes=s.num_classes, batch_size=batch,
                          drop_path_rate=s.drop_path, grad_clip=1.0, ema_decay=s.ema_decay, augment=AUGMENTS[augment],
                          grad_accum_steps=grad_accum_steps)


def start_production(run: Run, s: Settings, compile: bool) -> tuple[Trainer, Callable[[], None], float, float | None]:
    """A production trainer on uint8 batches on the device, warmed up: `(trainer, step, seconds of the
    first step (compilation included), steady peak GiB over what was resident before it)`."""
    device = torch.device(s.device)
    before = resident_allocated(device)  # the reference model
    trainer = build_trainer(s.models[0], s, augment=s.production_augment, batch=s.batch, img_size=s.img_size,
                            compile=compile, checkpoint_dir=run.tmp)
    images, labels = uint8_batch(s.batch, s.img_size, s.num_classes, s.device)
    step = lambda: trainer.train_step(images, labels)  # noqa: E731  (asynchronous: launches work only)
    first = timed(step, device)
    reset_peak(device)
    for _ in range(s.warmup):
        step()
    peak = peak_allocated(device)
    return trainer, step, first, None if peak is None else peak - before


def measure_production(run: Run, s: Settings, reference: tuple | None) -> Trainer:
    """Check 2: `Trainer.train_step`, alternating round by round with the bare step of `reference`.
    A failing compile falls back to eager trainer and reference."""
    compiled = s.compile
    try:
        trainer, step, first, peak = start_production(run, s, compiled)
    except Exception as e:  # noqa: BLE001
        if not compiled:
            raise
        run.results['production_compile_error'] = failure(e)['error']
        compiled = False
        free()
        trainer, step, first, peak = start_production(run, s, compiled)
        if reference is not None and reference[1] == 'compiled':
            reference = (build_model('ours', s.models[0], s, None), 'eager')
    device = torch.device(s.device)
    steps = {'production': step} | ({'bare': bare_step(reference[0], s, device)} if reference else {})
    seconds = alternate_calls(steps, **s.timing)
    result = dict(model=s.models[0], augment=s.production_augment, compiled=compiled,
                  img_s=s.batch / seconds['production'], peak_gib=peak, first_step_s=first)
    if reference is not None:
        result['bare_reference'] = dict(kind=reference[1], img_s=s.batch / seconds['bare'])
        run.results['production_vs_bare'] = seconds['bare'] / seconds['production']
    result['host_ms_per_range'] = range_ms(profile_events(step))  # one step, under the profiler
    run.results['production'] = result
    return trainer


def measure_eval(run: Run, s: Settings, trainer: Trainer, official: Path | None) -> None:
    """Check 4: the production trainer's EMA model (compiled as the trainer compiled it) and the
    official model, eager, through `measure_speed`."""
    speed = dict(batch_size=s.infer_batch, img_size=s.img_size, steps=s.eval_steps, device=torch.device(s.device),
                 dtype=s.dtype)
    ema = measure_speed(trainer.ema.module, **speed)['img_s']
    compiled = run.results.get('production', {}).get('compiled', s.compile)  # False after a compile fallback
    result = run.results['eval'] = dict(model=s.models[0], ema_compiled=compiled, batch=s.infer_batch, ema_img_s=ema)
    if official and s.models[0] in OFFICIAL_MODELS:
        model = build_model('official', s.models[0], s, official)
        result['official_eager_img_s'] = measure_speed(model, **speed)['img_s']
        result['ratio'] = ema / result['official_eager_img_s']


# --- 3. augmentation alone, 5. host work of one step -------------------------------------------------

def measure_augment(run: Run, s: Settings) -> None:
    """Check 3: `TrainTransform` alone, synchronised around every call."""
    images, labels = uint8_batch(s.batch, s.img_size, s.num_classes, s.device)
    timing = s.timing | dict(calls=1, rounds=max(s.rounds, 5))
    result = {}
    for name, augment in AUGMENTS.items():
        transform = TrainTransform(Augment(**augment), num_classes=s.num_classes, seed=0, device=timing['device'])
        index = itertools.count()
        call = lambda: transform(images, labels, index=next(index))  # noqa: E731
        result[name] = 1000 * alternate_calls({name: call}, **timing)[name]
    run.results['augment_ms'] = dict(result, batch=s.batch, img_size=s.img_size)


def measure_outside_ops(run: Run, s: Settings) -> None:
    """Check 5: `range_op_counts` of one step of eager trainers (the compiled forward and backward are
    not counted anyway), official augmentation, each profiled at the same step index."""
    warmup_steps = 1  # the first optimizer step also creates its state: profile the next one
    counts, accumulated = {}, {}  # accumulated: the first model with grad_accum_steps=ACCUM_STEPS
    configurations = [(model, batch, 1) for model, batch in itertools.product(s.op_models, s.op_batches)]
    for model, batch, micro_steps in configurations + [(s.op_models[0], b, ACCUM_STEPS) for b in s.op_batches]:
        trainer = build_trainer(model, s, augment='official', batch=batch, img_size=s.op_img_size, compile=False,
                                checkpoint_dir=run.tmp, grad_accum_steps=micro_steps)
        images, labels = uint8_batch(batch, s.op_img_size, s.num_classes, s.device)
        for _ in range(warmup_steps):
            trainer.train_step(images, labels)
        events = profile_events(lambda: trainer.train_step(images, labels))
        (counts.setdefault(model, {}) if micro_steps == 1 else accumulated)[str(batch)] = \
            range_op_counts(events, OUTSIDE_RANGES)
        del trainer, images, labels, events
        free()
    totals = {m: {b: c['total'] for b, c in by_batch.items()} for m, by_batch in counts.items()}
    accumulated_totals = {b: c['total'] for b, c in accumulated.items()}
    run.results['outside_model_ops'] = dict(
        counts=counts, totals=totals,
        accumulated=dict(model=s.op_models[0], grad_accum_steps=ACCUM_STEPS, totals=accumulated_totals,
                         constant_across_batches=len(set(accumulated_totals.values())) == 1),
        constant_across_batches=all(len(set(t.values())) == 1 for t in totals.values()),
        constant_across_models=all(len({totals[m][b] for m in totals}) == 1 for b in map(str, s.op_batches)),
        img_size=s.op_img_size, augment='official', eager=True, profiled_step=warmup_steps,
        note=f'ops per train_step outside forward/backward, profiled at {s.op_img_size} px: op counts do not '
             'depend on the resolution; the same step index (same augmentation draws) in every trainer')


# --- targets ------------------------------------------------------------------------------------

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
        ops_constant_with_accumulation=target((ops.get('accumulated') or {}).get('constant_across_batches'), True,
                                              f'outside_model_ops equal at batch {" and ".join(map(str, s.op_batches))} '
                                              f'with grad_accum_steps={ACCUM_STEPS}'),
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


# --- main ------------------------------------------------------------------------------------------

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
    """The checks in order of importance: what the targets need first; the official compiled step
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
        ours = models[required]['ours'].get('compiled', {})  # our compile times estimate the official one's
        if run.within_budget(f'the official compiled {required}',
                             ours.get('compile_train_s', 0) + ours.get('compile_infer_s', 0)):
            with run.section(f'compiled official {required}'):
                models[required]['official'].update(measure_source('official', required, s, official, ('compiled',))[0])
            torch._dynamo.reset()
    first_model_s = sum(v for k, v in run.results['section_s'].items() if k.endswith(f' {required}'))
    for name in optional:
        if run.within_budget(name, first_model_s * RELATIVE_COST[name] / RELATIVE_COST[required]):
            with run.section(f'bare step {name}'):
                models[name], _ = compare_model(name, s, official)
            torch._dynamo.reset()


def main(argv=None) -> int:
    args = parse_args(argv)
    warnings.filterwarnings('ignore')
    s = settings_from(args)
    if s.device == 'cuda' and not torch.cuda.is_available():
        sys.exit('error: no CUDA device here; run with --smoke for the CPU check')
    with tempfile.TemporaryDirectory() as tmp:
        run = Run(args.out, args.budget_s, tmp, forbidden=FORBIDDEN)
        run.results.update(environment(s.device), settings=asdict(s) | dict(dtype=str(s.dtype)),
                           official=str(args.official) if args.official else None, budget_s=args.budget_s,
                           production_vs_bare=None, outside_model_ops=None)
        measure_all(run, s, official_checkout(run, args), args.smoke)
    run.results['targets'] = evaluate_targets(run.results, s)
    run.results['table'] = table(run.results)
    run.save()
    run.report(f"{run.results['device']}, torch {torch.__version__}, timm {timm.__version__}, "
               f"{'smoke' if args.smoke else 'full'} run, {run.elapsed():.0f} s",
               (f"- {where} not measured: {' '.join(error.split())[:300]}"
                for where, error in measurement_errors(run.results)))
    return 1 if run.results.get('errors') else 0


if __name__ == '__main__':
    sys.exit(main())
