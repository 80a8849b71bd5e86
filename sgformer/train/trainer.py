"""The training loop: model and EMA (FSDP2 when the world has several ranks), AdamW with warmup +
cosine per step, gradient accumulation, NaN guard, per-epoch evaluation of model and EMA, progressive
resizing, cost metrics, DCP checkpoints and resume.

Build order (torchtitan's): seed -> model (+ EMA copy) -> parallelize -> optimizer -> schedule ->
checkpoint resume. `Trainer.train_step` is the one training step the stage, the tests and the
benchmarks run. It never waits for the device: the NaN guard decides on the device (the fused
optimizer skips a non-finite step through `found_inf`, the EMA update is weighted by 0), and the
loss statistics are copied back asynchronously and read `log_every` steps later, so the host
queues step after step while the GPU works.

Each epoch records what it cost beside what it reached (measured at the epoch's end, never in the
step): `img_size`, `data_wait` (share of the epoch's training time spent waiting for the loader),
`gpu_hours` (devices x hours, cumulative over resumes; process-hours on the CPU), `peak_mem_gib`
(CUDA's peak allocation; the CPU process's peak RSS) and, on a card of known peak, `mfu` (model
FLOPs utilisation: FLOPs of a step at the epoch's size, counted once per size, x steps/s, over the
devices' peak dense bf16 FLOP/s).

Randomness (drop-path) is re-seeded from (seed, rank, epoch) at every epoch start, and the batch
augmentation is seeded by the index of the batch, so a run resumed at an epoch boundary draws
exactly the numbers the uninterrupted run drew.
"""
import json
import resource
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import timm
import torch
import torch.distributed as dist
import torch.nn as nn
from timm.loss import SoftTargetCrossEntropy
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
from torch.distributed.checkpoint.stateful import Stateful
from torch.profiler import record_function
from tqdm import tqdm

from .. import models  # noqa: F401  (registers the sgformer_* models with timm)
from ..accuracy import accuracy_from_sums, classification_sums
from ..augment.transforms import EvalTransform, TrainTransform
from ..config import Checkpoint, Runtime, Variant
from ..flops import mfu, peak_flops, train_step_flops
from ..runtime import autocast, resolve_precision
from ..weights import load_init_weights
from .checkpoint import ModelOptimizerState, load_latest_checkpoint, save_checkpoint
from .distributed import DistInfo
from .optim import create_ema, create_optimizer, create_scheduler, floating_state, update_ema_
from .parallelize import parallelize
from .resize import train_img_size

Batch = tuple[torch.Tensor, torch.Tensor]

# History keys measured on the wall clock: they differ between two runs of the same settings.
MEASURED_KEYS = ('epoch_time_s', 'data_wait', 'gpu_hours', 'peak_mem_gib', 'mfu')

# Device-side counters of `StepStats`, in this order.
_LOSS_SUM, _GOOD_STEPS, _SKIPPED, _BAD_STREAK = range(4)


class NonFiniteLossError(RuntimeError):
    """Raised after too many consecutive steps with a NaN / inf loss."""


@dataclass
class Progress(Stateful):
    """Where the run is: saved in every checkpoint. `step` counts the batches trained on
    (optimizer steps, skipped ones included: the schedule advances on every batch)."""

    epoch: int = 0
    step: int = 0
    skipped_steps: int = 0
    gpu_hours: float = 0.0  # devices x hours spent so far, over every resume
    run_id: str = ''
    history: list[dict[str, float]] = field(default_factory=list)

    def state_dict(self) -> dict[str, Any]:
        # DCP flattens containers into keys; the history's length changes, so it travels as JSON.
        return dict(epoch=self.epoch, step=self.step, skipped_steps=self.skipped_steps, gpu_hours=self.gpu_hours,
                    run_id=self.run_id, history=json.dumps(self.history))

    def load_state_dict(self, state: dict[str, Any]) -> None:
        state = dict(state, history=json.loads(state['history']))
        for key, value in state.items():
            setattr(self, key, value)


class StepStats:
    """Counters kept on the device: this epoch's loss sum and good steps, the run's skipped steps and
    its current run of non-finite steps. They are read back without stalling the device:
    `snapshot(step)` starts a copy into pinned host memory, `read()` returns the last snapshot
    once its copy has landed (by then the device is usually far past it)."""

    def __init__(self, device: torch.device):
        self.values = torch.zeros(4, dtype=torch.float64, device=device)
        self._async = device.type == 'cuda'
        self._host = torch.zeros(4, dtype=torch.float64, pin_memory=self._async)
        self._event = torch.cuda.Event() if self._async else None
        self._step: int | None = None

    def record(self, loss: torch.Tensor, ok: torch.Tensor) -> None:
        """Account one step: `loss` (the global mean) and `ok` (bool) are device scalars."""
        ok = ok.double()
        streak = (self.values[_BAD_STREAK] + 1) * (1 - ok)
        self.values += torch.stack([torch.nan_to_num(loss.double() * ok), ok, 1 - ok, streak - self.values[_BAD_STREAK]])

    def snapshot(self, step: int) -> None:
        self._host.copy_(self.values, non_blocking=self._async)
        if self._event is not None:
            self._event.record()
        self._step = step

    def read(self) -> tuple[int, list[float]] | None:
        """`(step, values)` of the last `snapshot()`, or None when there is none pending."""
        if self._step is None:
            return None
        if self._event is not None:
            self._event.synchronize()
        step, self._step = self._step, None
        return step, self._host.tolist()

    def start_epoch(self) -> None:
        self.values[_LOSS_SUM] = 0
        self.values[_GOOD_STEPS] = 0


def _peak_mem_gib(device: torch.device) -> float:
    """CUDA's peak allocation on `device`, or the process's peak resident memory on the CPU."""
    if device.type == 'cuda':
        return torch.cuda.max_memory_allocated(device) / 2 ** 30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20  # KiB on Linux


def _set_epoch(loader: Iterable, epoch: int) -> None:
    """Make the loader's shuffle depend on the epoch only (FFCV `next_epoch`, torch samplers)."""
    if hasattr(loader, 'next_epoch'):
        loader.next_epoch = epoch
    elif hasattr(getattr(loader, 'sampler', None), 'set_epoch'):
        loader.sampler.set_epoch(epoch)


class Trainer:
    """Trains one variant; see the module docstring.

    Args:
        variant: The resolved variant (model, recipe, augmentation, seed; num_classes known).
        runtime: Device, precision, sharding, compile choices.
        checkpoint: How often to save and how many to keep.
        dist_info: From `init_distributed()`.
        steps_per_epoch: Optimizer steps in one epoch (length of the train loader).
        checkpoint_dir: Where DCP checkpoints live (resumed from by `resume()`).
        loss_fn: `(logits, soft targets) -> loss`; timm's `SoftTargetCrossEntropy` by default.
        compile_backend: torch.compile backend when `runtime.compile` is on.
    """

    def __init__(self, variant: Variant, *, runtime: Runtime, checkpoint: Checkpoint, dist_info: DistInfo,
                 steps_per_epoch: int, checkpoint_dir: str | Path,
                 loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
                 compile_backend: str = 'inductor'):
        self.variant, self.world, self.checkpoint = variant, dist_info, checkpoint
        self.steps_per_epoch, self.checkpoint_dir = steps_per_epoch, Path(checkpoint_dir)
        self.device = dist_info.device
        self.dtype = resolve_precision(runtime.precision, self.device)
        self.loss_fn = loss_fn or SoftTargetCrossEntropy()

        torch.manual_seed(variant.seed)  # the same initial weights on every rank
        self.model = timm.create_model(variant.model, **variant.model_kwargs())
        # a fresh run starts from these weights (a resumed one then loads its checkpoint over them)
        self.init_note = load_init_weights(self.model, variant.init_from, variant.model) if variant.init_from else None
        self.model.to(self.device)
        self.ema = create_ema(self.model, variant)
        self.sharded = dist_info.world_size > 1
        for module in (self.model, self.ema.module):
            parallelize(module, runtime, device=self.device, shard=self.sharded, compile_backend=compile_backend)
        self.optimizer = create_optimizer(self.model, variant)
        self.scheduler = create_scheduler(self.optimizer, variant, steps_per_epoch)
        self._params = [p for p in self.model.parameters() if p.requires_grad]
        self._ema_state, self._model_state = floating_state(self.ema.module), floating_state(self.model)

        self.train_transform = TrainTransform(variant.augment, num_classes=variant.num_classes,
                                              seed=variant.seed + 1_000_003 * dist_info.rank, device=self.device)
        self.eval_transform = EvalTransform()
        self.stats = StepStats(self.device)
        self._step_flops: dict[int, int] = {}  # per-image training FLOPs per size, counted when first needed
        self._peak_flops = peak_flops(self.device)
        self.progress = Progress()
        self.checkpoint_state = {'model': ModelOptimizerState(self.model, self.optimizer, self.ema.module),
                                 'progress': self.progress}

    def resume(self) -> bool:
        """Load the newest complete checkpoint, if any. Returns whether one was loaded."""
        step = load_latest_checkpoint(self.checkpoint_dir, self.checkpoint_state)
        if step is not None:
            self.scheduler.step_update(self.progress.step)
            self.stats.values[_SKIPPED] = self.progress.skipped_steps
        return step is not None

    # --- the step ------------------------------------------------------------------------------

    def train_step(self, images: torch.Tensor, labels: torch.Tensor) -> None:
        """One optimizer step on a uint8 batch: augmentation, forward/backward under the recipe's
        precision, NaN guard, gradient clipping, fused AdamW, EMA, schedule. Launches work only.

        The profiler ranges (`train_step/forward`, ...) let `benchmarks/gpu_check.py` count what
        the step dispatches outside the model."""
        with record_function('train_step/augment'):
            images, targets = self.train_transform(images, labels, index=self.progress.step)
        loss = self._forward_backward(images, targets)
        with record_function('train_step/guard'):
            loss = self._global_mean(loss)
            ok = torch.isfinite(loss)
            if self.variant.grad_clip:
                ok &= torch.isfinite(self._clip_gradients(self.variant.grad_clip))
        with record_function('train_step/optimizer'):
            # The fused AdamW skips the whole update on the device when found_inf is set (the
            # protocol GradScaler uses), so deciding needs no host sync.
            self.optimizer.found_inf = (~ok).float()
            self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)
        self.progress.step += 1
        with record_function('train_step/ema'):
            decay = self.ema.get_decay(self.progress.step)
            update_ema_(self._ema_state, self._model_state, ok * (1.0 - decay))
        self.scheduler.step_update(self.progress.step)
        with record_function('train_step/stats'):
            self.stats.record(loss, ok)

    def _forward_backward(self, images: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Forward and backward of the batch in `grad_accum_steps` micro-batches, each loss scaled
        so that the gradients add up to the whole batch's; FSDP2 reduces them after the last one
        only. Returns this rank's mean loss (detached)."""
        micro_steps = self.variant.grad_accum_steps
        with record_function('train_step/accumulate'):
            micro_batches = list(zip(images.chunk(micro_steps), targets.chunk(micro_steps)))
        losses = []
        for i, (x, y) in enumerate(micro_batches):
            if self.sharded:
                self.model.set_requires_gradient_sync(i == micro_steps - 1)
            with record_function('train_step/forward'), autocast(self.device, self.dtype):
                loss = self.loss_fn(self.model(x), y)
                if micro_steps > 1:
                    loss = loss / micro_steps
            with record_function('train_step/backward'):
                loss.backward()
            losses.append(loss.detach())
        with record_function('train_step/accumulate'):
            return losses[0] if micro_steps == 1 else torch.stack(losses).sum()

    def _global_mean(self, value: torch.Tensor) -> torch.Tensor:
        """Mean over ranks (enqueued on the device; every rank then takes the same NaN decision)."""
        if not self.sharded:
            return value
        value = value.float().clone()
        dist.all_reduce(value)
        return value / self.world.world_size

    def _clip_gradients(self, max_norm: float) -> torch.Tensor:
        """Scale the gradients to a global L2 norm of at most `max_norm`; returns the norm before.

        Works on the local shards (multi-tensor kernels, one all-reduce of the squared norm)
        instead of `clip_grad_norm_` over DTensors, which dispatches once per tensor.
        """
        grads = [getattr(p.grad, '_local_tensor', p.grad) for p in self._params if p.grad is not None]
        # torch's get_total_norm moves every per-tensor norm with its own .to(); here they share a device
        norm = torch.linalg.vector_norm(torch.stack(torch._foreach_norm(grads)))
        if self.sharded:
            squared = norm.square()
            dist.all_reduce(squared)
            norm = squared.sqrt()
        torch._foreach_mul_(grads, (max_norm / (norm + 1e-6)).clamp(max=1.0))
        return norm

    # --- the loop ------------------------------------------------------------------------------

    def fit(self, train_loader: Iterable[Batch], val_loader: Iterable[Batch], *, tracker=None,
            log_every: int = 10) -> list[dict[str, float]]:
        """Train from the current progress to the last epoch; returns the per-epoch history.

        Args:
            train_loader: Rank-sharded iterable of uint8 `(images, labels)` on the device; with
                progressive resizing, an object whose `at(img_size)` gives that iterable at the side.
            val_loader: The same at `img_size`.
            tracker: A `sgformer.tracking.Tracker` (per-step and per-epoch metrics), or None.
            log_every: Read the step statistics back (NaN guard, progress bar, tracker) every this many steps.
        """
        clock = time.perf_counter()  # the epochs' wall time, checkpoint saves included, adds to gpu_hours
        while self.progress.epoch < self.variant.epochs:
            epoch = self.progress.epoch
            torch.manual_seed(self.variant.seed + self.world.rank + 100_003 * (epoch + 1))
            img_size = train_img_size(epoch, self.variant.img_size, self.variant.progressive_resize)
            loader = train_loader.at(img_size) if hasattr(train_loader, 'at') else train_loader
            _set_epoch(loader, epoch)
            started = time.perf_counter()
            train_loss, waited = self._train_epoch(loader, tracker, log_every)
            train_s = time.perf_counter() - started
            record = dict(epoch=epoch, train_loss=train_loss, lr=self.optimizer.param_groups[0]['lr'],
                          epoch_time_s=train_s)
            record.update({f'val_{k}': v for k, v in self.evaluate(self.model, val_loader).items()})
            record.update({f'val_ema_{k}': v for k, v in self.evaluate(self.ema.module, val_loader).items()})
            now = time.perf_counter()
            self.progress.gpu_hours += self.world.world_size * (now - clock) / 3600
            clock = now
            record.update(self._costs(img_size, steps=len(loader), train_s=train_s, waited_s=waited))
            self.progress.history.append(record)
            self.progress.epoch += 1
            if tracker is not None:
                tracker.log_epoch(record)
            if self.progress.epoch % self.checkpoint.every_epochs == 0 or self.progress.epoch == self.variant.epochs:
                save_checkpoint(self.checkpoint_dir, self.progress.step, self.checkpoint_state, keep=self.checkpoint.keep)
        return self.progress.history

    def _costs(self, img_size: int, *, steps: int, train_s: float, waited_s: float) -> dict[str, float]:
        """What the epoch cost (see the module docstring); `mfu` only on a card of known peak."""
        costs = dict(img_size=img_size, data_wait=waited_s / max(train_s, 1e-9), gpu_hours=self.progress.gpu_hours,
                     peak_mem_gib=_peak_mem_gib(self.device))
        if self._peak_flops is not None:
            if img_size not in self._step_flops:  # once per size: a fresh copy of the model, batch of 1
                fresh = timm.create_model(self.variant.model, **self.variant.model_kwargs()).to(self.device)
                self._step_flops[img_size] = train_step_flops(fresh, img_size, self.device)
            step_flops = self._step_flops[img_size] * self.variant.batch_size
            costs['mfu'] = mfu(step_flops, steps / max(train_s, 1e-9), self._peak_flops, self.world.world_size)
        return costs

    def _train_epoch(self, loader: Iterable[Batch], tracker, log_every: int) -> tuple[float, float]:
        """One epoch of steps; returns the mean loss and the seconds spent waiting for the loader."""
        self.model.train()
        self.stats.start_epoch()
        bar = tqdm(total=self.steps_per_epoch, disable=not self.world.is_main, leave=False,
                   desc=f'epoch {self.progress.epoch}', unit='step')
        window = _Window(self.variant.batch_size, self.progress.step)
        batches, waited = iter(loader), 0.0
        with bar:  # closed (its line cleared) on an error too, so the error's line stands alone
            while True:
                asked = time.perf_counter()
                batch = next(batches, None)
                waited += time.perf_counter() - asked
                if batch is None:
                    break
                self.train_step(*batch)
                bar.update(1)
                if self.progress.step % log_every == 0:
                    self._report(window.close(self.stats.read()), bar, tracker)  # the previous snapshot
                    self.stats.snapshot(self.progress.step)
            self.stats.snapshot(self.progress.step)
            self._report(window.close(self.stats.read()), bar, tracker)  # the epoch's last values: one sync
        loss_sum, good = self.stats.values[_LOSS_SUM].item(), self.stats.values[_GOOD_STEPS].item()
        return loss_sum / max(good, 1), waited

    def _report(self, window: dict | None, bar, tracker) -> None:
        """Act on statistics read back from the device: NaN guard, progress bar, tracker."""
        if window is None:
            return
        self.progress.skipped_steps = int(window['skipped'])
        if window['streak'] >= self.variant.max_nonfinite_steps:
            raise NonFiniteLossError(
                f"loss was NaN/inf for {int(window['streak'])} consecutive steps (max_nonfinite_steps="
                f'{self.variant.max_nonfinite_steps}); lower the learning rate or check the data')
        if window['loss'] is None:
            return
        bar.set_postfix(loss=f"{window['loss']:.4f}", img_s=f"{window['img_s']:.0f}")
        if tracker is not None:
            tracker.log_step(dict(loss=window['loss'], lr=self.optimizer.param_groups[0]['lr'], img_s=window['img_s'],
                                  skipped_steps=window['skipped']), step=window['step'])

    @torch.no_grad()
    def evaluate(self, model: nn.Module, loader: Iterable[Batch]) -> dict[str, float]:
        """Top-1 / top-5 accuracy and loss over the whole (rank-sharded) loader."""
        model.eval()
        sums = torch.zeros(4, dtype=torch.float64, device=self.device)
        for images, labels in loader:
            images, labels = self.eval_transform(images, labels)
            with autocast(self.device, self.dtype):
                logits = model(images)
            sums += classification_sums(logits, labels)
        if dist.is_initialized() and self.world.world_size > 1:
            dist.all_reduce(sums)
        return accuracy_from_sums(sums.tolist())

    def full_state_dicts(self) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        """Collective: unsharded (model, EMA) weights; complete on rank 0, empty elsewhere."""
        options = StateDictOptions(full_state_dict=True, cpu_offload=True)
        return get_model_state_dict(self.model, options=options), get_model_state_dict(self.ema.module, options=options)


class _Window:
    """Turns successive `StepStats` read-backs into the mean loss and img/s since the last one."""

    def __init__(self, global_batch: int, step: int):
        self.global_batch, self.step, self.time = global_batch, step, time.perf_counter()
        self.loss_sum = self.good = 0.0

    def close(self, snapshot: tuple[int, list[float]] | None) -> dict | None:
        if snapshot is None:
            return None
        step, values = snapshot
        now = time.perf_counter()
        good = values[_GOOD_STEPS] - self.good
        window = dict(loss=(values[_LOSS_SUM] - self.loss_sum) / good if good else None, step=step,
                      img_s=self.global_batch * (step - self.step) / max(now - self.time, 1e-9),
                      skipped=values[_SKIPPED], streak=values[_BAD_STREAK])
        self.step, self.time, self.loss_sum, self.good = step, now, values[_LOSS_SUM], values[_GOOD_STEPS]
        return window
