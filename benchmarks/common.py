"""What the benchmarks share: synchronised timing in alternating rounds, peak memory, the profiler's
op counts of one step, the bare model step, and the report (markdown table, targets, and JSON written
atomically with the environment it was measured in).

Timing builds on `sgformer.eval.metrics.timed` (and the benchmarks use `median_seconds` as it is),
the rule the evaluate stage times by. This module imports torch and sgformer's torch-only helpers at
the top, never mlflow, ffcv or dvc (`gpu_check.py` promises an offline machine none of them); timm,
the models and the trainer only inside the functions that need them (bench_model counts what a
model's process imports in its memory). The scripts beside it import it as `common`: a script's own
folder is on `sys.path`.
"""
import contextlib
import datetime
import functools
import gc
import importlib.util
import platform
import resource
import statistics
import sys
import time
import traceback
import warnings
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.profiler import ProfilerActivity, profile

from sgformer.eval.metrics import timed
from sgformer.io import write_json_atomic
from sgformer.runtime import autocast

MIB, GIB = 2 ** 20, 2 ** 30
OFFICIAL_MODELS = ('sgformer_s', 'sgformer_m', 'sgformer_b')  # the variants the official code defines
T = TypeVar('T')


# --- timing ----------------------------------------------------------------------------------------

def repeated(fn: Callable[[], object], n: int) -> Callable[[], None]:
    """A function calling `fn` `n` times: one timed region over several asynchronous steps."""
    def calls() -> None:
        for _ in range(n):
            fn()
    return calls


def round_seconds(fn: Callable[[], object], calls: int, device: torch.device) -> float:
    """Seconds per call over one round of `calls` calls with one synchronisation (`timed`)."""
    return timed(repeated(fn, calls), device) / calls


def alternate(measures: dict[str, Callable[[], T]], rounds: int, *, discard: int = 0) -> dict[str, list[T]]:
    """Run every measurement once per round, taking turns, so that they share the machine's noise.

    Args:
        measures: name -> a call returning one result (seconds, or whatever the caller sums).
        rounds: rounds whose results are kept.
        discard: rounds run first, in the same turns, whose results are dropped (JIT, start-up).

    Returns:
        name -> the kept results, one per round.
    """
    kept = {name: [] for name in measures}
    for index in range(discard + rounds):
        for name, measure in measures.items():
            result = measure()
            if index >= discard:
                kept[name].append(result)
    return kept


def alternate_calls(fns: dict[str, Callable[[], object]], *, warmup: int, calls: int, rounds: int,
                    device: torch.device) -> dict[str, float]:
    """Seconds per call of each function: `warmup` untimed calls of each, then `rounds` rounds of
    `calls` calls with one synchronisation (`round_seconds`), the functions alternating round by
    round; the median round counts."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    runs = alternate({name: functools.partial(round_seconds, fn, calls, device) for name, fn in fns.items()}, rounds)
    return {name: statistics.median(seconds) for name, seconds in runs.items()}


def first_then_steady(fn: Callable[[], object], *, warmup: int, calls: int, rounds: int,
                      device: torch.device) -> tuple[float, float, float | None]:
    """(seconds of the first call, steady seconds per call (`alternate_calls`), steady peak GiB)."""
    first = timed(fn, device)
    reset_peak(device)
    steady = alternate_calls({'fn': fn}, warmup=warmup, calls=calls, rounds=rounds, device=device)['fn']
    return first, steady, peak_allocated(device)


# --- memory ----------------------------------------------------------------------------------------

def free() -> None:
    """Drop what is unreferenced (and CUDA's cached blocks) between measurements."""
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def reset_peak(device: torch.device) -> None:
    """Start counting `peak_allocated` here (CUDA; after the queued work finishes)."""
    if device.type == 'cuda':
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)


def peak_allocated(device: torch.device, unit: int = GIB) -> float | None:
    """Peak CUDA memory allocated since `reset_peak`, in `unit` bytes; None on CPU."""
    return torch.cuda.max_memory_allocated(device) / unit if device.type == 'cuda' else None


def resident_allocated(device: torch.device, unit: int = GIB) -> float:
    """CUDA memory allocated now, in `unit` bytes; 0 on CPU."""
    return torch.cuda.memory_allocated(device) / unit if device.type == 'cuda' else 0.0


def rss_peak(unit: int = MIB) -> float:
    """Peak resident set size of this process so far, in `unit` bytes (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / unit


# --- op counting -----------------------------------------------------------------------------------

def profile_events(fn: Callable[[], object]):
    """The profiler's events (CPU activity, with their `cpu_parent` tree) of one call of `fn`;
    `.key_averages()` sums them per operator."""
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        fn()
    return prof.events()


def is_op(event) -> bool:
    """A dispatched operator (`aten::add`, ...), not a profiler range or the profiler's own bookkeeping."""
    return '::' in event.name and not event.name.startswith(('profiler::', 'autograd::'))


def range_ms(events, prefix: str = 'train_step/') -> dict[str, float]:
    """Host milliseconds of each `<prefix><range>` (on CPU that includes the computation)."""
    return {e.name.removeprefix(prefix): e.cpu_time_total / 1000 for e in events if e.name.startswith(prefix)}


def range_op_counts(events, ranges: Iterable[str], prefix: str = 'train_step/') -> dict:
    """Per `<prefix><range>` of `ranges`, the ops whose nearest enclosing range it is and that do not
    run inside another op (walking the event tree's `cpu_parent`).

    Returns:
        `total` (all ranges), `ranges` (count per range) and `top_ops` (the 4 most frequent per range).
    """
    per_range = {name: Counter() for name in ranges}
    for event in events:
        if not is_op(event):
            continue
        parent = event.cpu_parent
        while parent is not None and not is_op(parent) and not parent.name.startswith(prefix):
            parent = parent.cpu_parent  # through user ranges such as Optimizer.step#AdamW.step
        if parent is not None and not is_op(parent):
            range_name = parent.name.removeprefix(prefix)
            if range_name in per_range:
                per_range[range_name][event.name] += 1
    return dict(total=sum(sum(c.values()) for c in per_range.values()),
                ranges={name: sum(c.values()) for name, c in per_range.items()},
                top_ops={name: dict(c.most_common(4)) for name, c in per_range.items()})


# --- models and steps ------------------------------------------------------------------------------

@functools.cache
def load_official(checkout: Path):
    """The official `sgformer.py` of a checkout of github.com/OliverRensu/SG-Former, as a module,
    loaded once. Its `@register_model` takes the timm names `sgformer_s/m/b`, so this package's models
    are registered again over them (`timm.create_model` keeps building ours)."""
    import numpy as np
    from timm.models import register_model

    from sgformer.models import sgformer as ours
    if not hasattr(np, 'float'):  # the official pos_embed.py predates NumPy 1.24
        np.float = float
    sys.path.append(str(checkout))
    spec = importlib.util.spec_from_file_location('sgformer_official', checkout / 'sgformer.py')
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        spec.loader.exec_module(module)
        for name in OFFICIAL_MODELS:
            register_model(getattr(ours, name))
    return module


def bare_train_step(model: nn.Module, optimizer: torch.optim.Optimizer, images: torch.Tensor, labels: torch.Tensor,
                    dtype: torch.dtype) -> Callable[[], None]:
    """The bare model step: forward + backward under autocast to `dtype`, optimizer step, zero_grad."""
    def step() -> None:
        with autocast(images.device, dtype):
            loss = F.cross_entropy(model(images), labels)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    return step


def inference_call(model: nn.Module, images: torch.Tensor, dtype: torch.dtype) -> Callable[[], None]:
    """One forward under `torch.inference_mode` and autocast to `dtype`."""
    def call() -> None:
        with torch.inference_mode(), autocast(images.device, dtype):
            model(images)
    return call


def create_trainer(model: str, *, device: str, compile: bool, dist_info, steps_per_epoch: int, checkpoint_dir: str,
                   **variant):
    """The production `Trainer` of `model` (`resolve_variant(model, **variant)`) as the train stage
    builds it, default checkpoint settings (it never saves here)."""
    from sgformer.config import Checkpoint, Runtime, resolve_variant  # not at the top: bench_model's worker
    from sgformer.train.trainer import Trainer  # counts imports in a model's memory
    return Trainer(resolve_variant(model, **variant), runtime=Runtime(device=device, compile=compile),
                   checkpoint=Checkpoint(), dist_info=dist_info, steps_per_epoch=steps_per_epoch,
                   checkpoint_dir=checkpoint_dir)


def uint8_batch(batch: int, img_size: int, num_classes: int,
                device: torch.device | str) -> tuple[torch.Tensor, torch.Tensor]:
    """Random uint8 images `B, 3, H, W` and labels on `device`: what the train loader yields."""
    images = torch.randint(0, 256, (batch, 3, img_size, img_size), dtype=torch.uint8, device=device)
    return images, torch.randint(0, num_classes, (batch,), device=device)


# --- the report ------------------------------------------------------------------------------------

def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def error_text(error: BaseException) -> str:
    return f'{type(error).__name__}: {error}'


def failure(error: BaseException) -> dict[str, str]:
    """`{'error': ...}` of a measurement that failed (its traceback logged), for the JSON."""
    log(traceback.format_exc())
    return {'error': error_text(error)[:2000]}


def fmt(value: float | None, digits: int = 1) -> str:
    return '—' if value is None else f'{value:,.{digits}f}'


def times(a: float | None, b: float | None) -> str | None:
    """`a / b` as `1.23x`, or None without both."""
    return f'{a / b:.2f}x' if a is not None and b else None


def markdown_table(header: Sequence[object], rows: Iterable[Sequence[object]]) -> str:
    """A markdown table of cells written with `str`; an empty cell is one space (`| |`)."""
    def line(cells: Sequence[object]) -> str:
        return '|' + '|'.join(f' {text} ' if (text := str(cell)) else ' ' for cell in cells) + '|'
    return '\n'.join([line(header), '|' + '---|' * len(header), *map(line, rows)])


def target(value, threshold, what: str, at_least: bool = True) -> dict | None:
    """A target as `met`, `value`, `threshold`, `what`; None when `value` was not measured."""
    if value is None:
        return None
    met = value >= threshold if at_least else value <= threshold
    return dict(met=bool(met), value=value, threshold=threshold, what=what)


def target_lines(targets: dict[str, dict]) -> str:
    """A markdown check list of `target` results."""
    lines = []
    for t in targets.values():
        value = t['value'] if isinstance(t['value'], bool) else f"{t['value']:.2f}"
        lines.append(f"- [{'x' if t['met'] else ' '}] {t['what']}: {value}")
    return '\n'.join(lines) or '- (no target measurable in this run)'


def device_name(device: str) -> str:
    """The GPU's name on CUDA, else the CPU's."""
    return torch.cuda.get_device_name() if device == 'cuda' else (platform.processor() or platform.machine())


def environment(device: str) -> dict[str, Any]:
    """What a result was measured on: date, command, device, versions, torch's CPU threads."""
    import timm
    return dict(date=datetime.date.today().isoformat(), command=' '.join(sys.argv), device=device_name(device),
                versions=dict(python=platform.python_version(), torch=torch.__version__, timm=timm.__version__,
                              cuda=torch.version.cuda),
                threads=torch.get_num_threads())


@dataclass
class Run:
    """The results of a run of sections, saved as JSON after every section, within a time budget.

    Args:
        out: the JSON file (rewritten atomically: a run killed midway leaves what it had).
        budget_s: wall seconds the optional sections may fill (`within_budget`).
        tmp: a scratch folder for the run's files.
        forbidden: modules whose import the JSON reports (`forbidden_imports`).
    """
    out: Path
    budget_s: float
    tmp: str
    forbidden: tuple[str, ...] = ()
    started: float = field(default_factory=time.perf_counter)
    results: dict = field(default_factory=dict)

    def elapsed(self) -> float:
        return time.perf_counter() - self.started

    def within_budget(self, what: str, estimate_s: float) -> bool:
        """Whether `what` (~`estimate_s` seconds) still fits in the budget; notes a skip."""
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
        """Run one measurement; an exception is recorded in `errors` and the run goes on."""
        log(f'[{self.elapsed():5.0f} s] {name} ...')
        started = time.perf_counter()
        try:
            yield
        except Exception as e:  # noqa: BLE001  (a failed section must not lose the others)
            self.results.setdefault('errors', {})[name] = error_text(e)
            log(traceback.format_exc())
        finally:
            self.results.setdefault('section_s', {})[name] = round(time.perf_counter() - started, 1)
            free()
            self.save()

    def report(self, title: str, extra: Iterable[str] = ()) -> None:
        """Print `title`, the results' `table` and `targets` (`target_lines`), the notes, the errors
        of sections, then the `extra` lines."""
        print(title)
        print(self.results['table'] + '\n')
        print(target_lines(self.results['targets']))
        for message in self.results.get('notes', []):
            print(f'- note: {message}')
        for name, error in self.results.get('errors', {}).items():
            print(f'- error in {name}: {error}')
        for line in extra:
            print(line)

    def save(self) -> None:
        self.results['wall_s'] = round(self.elapsed(), 1)
        self.results['forbidden_imports'] = sorted(m for m in self.forbidden if m in sys.modules)
        write_json_atomic(self.out, self.results)
