"""Optimizer, learning-rate schedule and EMA of the official recipe, built from timm components."""
import torch
import torch.nn as nn
from timm.optim import create_optimizer_v2
from timm.scheduler import CosineLRScheduler
from timm.utils import ModelEmaV3

from ..config import Variant


def create_optimizer(model: nn.Module, variant: Variant) -> torch.optim.Optimizer:
    """AdamW at the variant's (scaled) lr; norms, biases (every 1-D parameter) and
    `model.no_weight_decay()` names get no decay; with `layer_decay`, timm's layer-wise lr decay
    (groups from `model.group_matcher`, each group's `lr_scale` applied by the scheduler).

    Build it after `fully_shard`, so that it holds the sharded parameters. The fused kernel updates
    all parameters in one pass (CPU and CUDA, plain tensors and FSDP2 shards) and can skip a step on
    the device (`found_inf`), which the trainer's NaN guard uses. On CPU torch's default loops over
    SG-Former's ~200 tensors one at a time: 3x slower on plain tensors, 7x on FSDP2 shards
    (measured at commit a0e4d20: benchmarks/README.md, `bench_train.py`).
    """
    return create_optimizer_v2(model, opt='adamw', lr=variant.scaled_lr(), weight_decay=variant.weight_decay,
                               layer_decay=variant.layer_decay, fused=True)


def create_scheduler(optimizer: torch.optim.Optimizer, variant: Variant, steps_per_epoch: int) -> CosineLRScheduler:
    """Linear warmup from `warmup_lr` over `warmup_epochs`, then cosine to `min_lr` at the last
    step, stepped per optimizer step (call `step_update(step)`)."""
    warmup_steps = round(variant.warmup_epochs * steps_per_epoch)
    return CosineLRScheduler(
        optimizer,
        t_initial=max(variant.epochs * steps_per_epoch - warmup_steps, 1),
        lr_min=variant.min_lr,
        warmup_t=warmup_steps,
        warmup_lr_init=variant.warmup_lr,
        warmup_prefix=True,
        t_in_epochs=False,
    )


def create_ema(model: nn.Module, variant: Variant) -> ModelEmaV3:
    """EMA copy of `model` with the variant's decay (timm's decay warm-up with `ema_warmup`, for
    short runs whose step count is small next to 1 / (1 - decay)).

    Create it before sharding and shard `ema.module` like the model; the trainer then updates the
    local shards with `update_ema_` (the decay schedule stays timm's `get_decay`).
    """
    return ModelEmaV3(model, decay=variant.ema_decay, use_warmup=variant.ema_warmup)


def floating_state(module: nn.Module) -> list[torch.Tensor]:
    """The module's floating-point parameters and buffers as plain tensors: a DTensor's local shard
    (`_local_tensor`, a view of FSDP2's sharded storage, which stays in place), so that the EMA
    update is a few multi-tensor kernels instead of one DTensor dispatch per tensor."""
    tensors = [t for t in (*module.parameters(), *module.buffers()) if t.is_floating_point()]
    return [getattr(t, '_local_tensor', t).detach() for t in tensors]


@torch.no_grad()
def update_ema_(ema: list[torch.Tensor], model: list[torch.Tensor], weight: torch.Tensor) -> None:
    """ema += weight * (model - ema), for all tensors at once; `weight` is a device scalar (0 on a
    skipped step, so no host sync decides whether to update)."""
    diff = torch._foreach_sub(model, ema)
    torch._foreach_mul_(diff, weight)
    torch._foreach_add_(ema, diff)
