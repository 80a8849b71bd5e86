"""The training loop: FSDP2 model and EMA, AdamW with warmup + cosine per step, NaN guard,
per-epoch evaluation of model and EMA, DCP checkpoints and automatic resume.

Build order (torchtitan's): process group -> seed -> model (+ EMA copy) -> parallelize ->
optimizer -> schedule -> checkpoint resume. Randomness (augmentation, drop-path) is re-seeded
from (seed, rank, epoch) at every epoch start, so a run resumed at an epoch boundary draws exactly
the numbers the uninterrupted run drew.
"""
import json
import math
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import timm
import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
from torch.distributed.checkpoint.stateful import Stateful
from tqdm import tqdm

from .checkpoint import ModelOptimizerState, load_latest_checkpoint, save_checkpoint
from .distributed import DistInfo
from .optim import create_ema, create_optimizer, create_scheduler
from .parallelize import parallelize

Batch = tuple[torch.Tensor, torch.Tensor]


class NonFiniteLossError(RuntimeError):
    """Raised after too many consecutive steps with a NaN / inf loss."""


@dataclass
class Progress(Stateful):
    """Where the run is: saved in every checkpoint."""

    epoch: int = 0
    step: int = 0
    skipped_steps: int = 0
    run_id: str = ''
    history: list[dict[str, float]] = field(default_factory=list)

    def state_dict(self) -> dict[str, Any]:
        # DCP flattens containers into keys; the history's length changes, so it travels as JSON.
        return dict(epoch=self.epoch, step=self.step, skipped_steps=self.skipped_steps, run_id=self.run_id,
                    history=json.dumps(self.history))

    def load_state_dict(self, state: dict[str, Any]) -> None:
        state = dict(state, history=json.loads(state['history']))
        for key, value in state.items():
            setattr(self, key, value)


@dataclass(frozen=True)
class TrainSchedule:
    """The recipe's step-level numbers, from the validated config."""

    epochs: int
    lr: float
    weight_decay: float
    warmup_epochs: float
    warmup_lr: float
    min_lr: float
    ema_decay: float
    ema_warmup: bool
    grad_clip: float | None
    max_nonfinite_steps: int


@dataclass(frozen=True)
class Parallelism:
    """How the model is spread and run, from the validated config."""

    param_dtype: str = 'float32'
    reduce_dtype: str = 'float32'
    activation_checkpointing: bool = False
    compile: bool = False


def _set_epoch(loader: Iterable, epoch: int) -> None:
    """Make the loader's shuffle depend on the epoch only (FFCV `next_epoch`, torch samplers)."""
    if hasattr(loader, 'next_epoch'):
        loader.next_epoch = epoch
    elif hasattr(getattr(loader, 'sampler', None), 'set_epoch'):
        loader.sampler.set_epoch(epoch)


def _all_reduce_sum(values: list[float], device: torch.device) -> list[float]:
    tensor = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(tensor)
    return tensor.tolist()


class Trainer:
    """Trains one variant; see the module docstring.

    Args:
        model_name: timm model name.
        model_kwargs: `timm.create_model` keyword arguments.
        schedule: Optimisation recipe.
        parallelism: Sharding / precision / compile choices.
        dist_info: From `init_distributed()`.
        steps_per_epoch: Optimizer steps in one epoch (length of the train loader).
        checkpoint_dir: Where DCP checkpoints live (resumed from automatically).
        checkpoint_every: Save every this many epochs (and after the last).
        keep_checkpoints: How many checkpoints to keep.
        seed: Base seed; rank r uses seed + r for its randomness.
        tracker: A `sgformer.tracking.Tracker`-like object (log_metrics, run_id), or None.
    """

    def __init__(self, *, model_name: str, model_kwargs: dict[str, Any], schedule: TrainSchedule,
                 parallelism: Parallelism, dist_info: DistInfo, steps_per_epoch: int, checkpoint_dir: str | Path,
                 checkpoint_every: int = 1, keep_checkpoints: int = 2, seed: int = 0, tracker=None):
        self.schedule, self.dist, self.seed, self.tracker = schedule, dist_info, seed, tracker
        self.steps_per_epoch = steps_per_epoch
        self.checkpoint_dir, self.checkpoint_every, self.keep = Path(checkpoint_dir), checkpoint_every, keep_checkpoints
        self.model_name, self.model_kwargs = model_name, model_kwargs

        torch.manual_seed(seed)  # the same initial weights on every rank
        self.model = timm.create_model(model_name, **model_kwargs)
        self.ema = create_ema(self.model, decay=schedule.ema_decay, warmup=schedule.ema_warmup)
        shard = dist_info.world_size > 1 or parallelism.param_dtype != 'float32'
        for module in (self.model, self.ema.module):
            parallelize(module, param_dtype=parallelism.param_dtype, reduce_dtype=parallelism.reduce_dtype,
                        activation_checkpointing=parallelism.activation_checkpointing, compile=parallelism.compile,
                        shard=shard)
        self.optimizer = create_optimizer(self.model, lr=schedule.lr, weight_decay=schedule.weight_decay)
        warmup_steps = round(schedule.warmup_epochs * steps_per_epoch)
        self.scheduler = create_scheduler(self.optimizer, total_steps=schedule.epochs * steps_per_epoch,
                                          warmup_steps=warmup_steps, warmup_lr=schedule.warmup_lr, min_lr=schedule.min_lr)
        self.progress = Progress()
        self.checkpoint_state = {'model': ModelOptimizerState(self.model, self.optimizer, self.ema.module),
                                 'progress': self.progress}

    def resume(self) -> bool:
        """Load the newest complete checkpoint, if any. Returns whether one was loaded."""
        step = load_latest_checkpoint(self.checkpoint_dir, self.checkpoint_state)
        if step is not None:
            self.scheduler.step_update(self.progress.step)
        return step is not None

    def fit(self, train_loader: Iterable[Batch], val_loader: Iterable[Batch],
            loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] = F.cross_entropy,
            batch_transform: Callable[[torch.Tensor, torch.Tensor], Batch] | None = None,
            eval_transform: Callable[[torch.Tensor, torch.Tensor], Batch] | None = None,
            global_batch: int | None = None) -> list[dict[str, float]]:
        """Train from the current progress to the last epoch; returns the per-epoch history.

        Args:
            train_loader, val_loader: Rank-sharded iterables of `(images, labels)` on the device.
            loss_fn: `(logits, targets) -> loss`; targets are what `batch_transform` returns.
            batch_transform: Train-time batch augmentation, e.g. mixup to soft targets.
            eval_transform: Val-time batch preprocessing (e.g. normalisation); labels stay class ids.
            global_batch: Images per optimizer step over all ranks (for img/s).
        """
        while self.progress.epoch < self.schedule.epochs:
            epoch = self.progress.epoch
            torch.manual_seed(self.seed + self.dist.rank + 100_003 * (epoch + 1))
            _set_epoch(train_loader, epoch)
            started = time.perf_counter()
            train_loss = self._train_epoch(train_loader, loss_fn, batch_transform, global_batch)
            record = dict(epoch=epoch, train_loss=train_loss, lr=self.optimizer.param_groups[0]['lr'],
                          epoch_time_s=time.perf_counter() - started)
            record.update({f'val_{k}': v for k, v in self.evaluate(self.model, val_loader, eval_transform).items()})
            record.update({f'val_ema_{k}': v for k, v in self.evaluate(self.ema.module, val_loader, eval_transform).items()})
            self.progress.history.append(record)
            self.progress.epoch += 1
            if self.tracker is not None:
                self.tracker.log_metrics({k: v for k, v in record.items() if k != 'epoch'}, step=epoch)
            if self.progress.epoch % self.checkpoint_every == 0 or self.progress.epoch == self.schedule.epochs:
                save_checkpoint(self.checkpoint_dir, self.progress.step, self.checkpoint_state, keep=self.keep)
        return self.progress.history

    def _train_epoch(self, loader, loss_fn, batch_transform, global_batch) -> float:
        self.model.train()
        total, count, consecutive_bad = 0.0, 0, 0
        bar = tqdm(loader, total=self.steps_per_epoch, disable=not self.dist.is_main, leave=False,
                   desc=f'epoch {self.progress.epoch}', unit='step')
        tick = time.perf_counter()
        for images, labels in bar:
            if batch_transform is not None:
                images, labels = batch_transform(images, labels)
            loss = loss_fn(self.model(images), labels)
            loss.backward()
            (global_loss,) = _all_reduce_sum([loss.item()], self.dist.device)  # also the NaN guard's one sync
            global_loss /= self.dist.world_size
            if not math.isfinite(global_loss):
                consecutive_bad = self._skip_step(consecutive_bad + 1)
                continue
            consecutive_bad = 0
            if self.schedule.grad_clip:
                nn.utils.clip_grad_norm_(self.model.parameters(), self.schedule.grad_clip)
            self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)
            self.progress.step += 1
            self.ema.update(self.model, self.progress.step)
            self.scheduler.step_update(self.progress.step)
            total, count = total + global_loss, count + 1
            now = time.perf_counter()
            images_per_s = (global_batch or images.shape[0] * self.dist.world_size) / (now - tick)
            tick = now
            bar.set_postfix(loss=f'{global_loss:.4f}', img_s=f'{images_per_s:.0f}')
            if self.tracker is not None:
                self.tracker.log_metrics({'train/loss': global_loss, 'train/lr': self.optimizer.param_groups[0]['lr'],
                                          'train/img_s': images_per_s}, step=self.progress.step)
        return total / max(count, 1)

    def _skip_step(self, consecutive_bad: int) -> int:
        """Drop the gradients of a step whose loss is not finite; give up after too many in a row."""
        self.optimizer.zero_grad(set_to_none=True)
        self.progress.skipped_steps += 1
        if self.tracker is not None:
            self.tracker.log_metrics({'train/skipped_steps': self.progress.skipped_steps}, step=self.progress.step)
        if consecutive_bad >= self.schedule.max_nonfinite_steps:
            raise NonFiniteLossError(
                f'loss was NaN/inf for {consecutive_bad} consecutive steps (max_nonfinite_steps='
                f'{self.schedule.max_nonfinite_steps}); lower the learning rate or check the data')
        return consecutive_bad

    @torch.no_grad()
    def evaluate(self, model: nn.Module, loader: Iterable[Batch],
                 transform: Callable[[torch.Tensor, torch.Tensor], Batch] | None = None) -> dict[str, float]:
        """Top-1 / top-5 accuracy and loss over the whole (rank-sharded) loader."""
        model.eval()
        correct1 = correct5 = loss_sum = seen = 0.0
        for images, labels in loader:
            if transform is not None:
                images, labels = transform(images, labels)
            logits = model(images).float()
            top5 = logits.topk(min(5, logits.shape[1]), dim=1).indices
            correct1 += (top5[:, 0] == labels).sum().item()
            correct5 += (top5 == labels[:, None]).any(dim=1).sum().item()
            loss_sum += F.cross_entropy(logits, labels, reduction='sum').item()
            seen += labels.numel()
        correct1, correct5, loss_sum, seen = _all_reduce_sum([correct1, correct5, loss_sum, seen], self.dist.device)
        return dict(top1=correct1 / max(seen, 1), top5=correct5 / max(seen, 1), loss=loss_sum / max(seen, 1))

    def full_state_dicts(self) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        """Collective: unsharded (model, EMA) weights; complete on rank 0, empty elsewhere."""
        options = StateDictOptions(full_state_dict=True, cpu_offload=True)
        return get_model_state_dict(self.model, options=options), get_model_state_dict(self.ema.module, options=options)
