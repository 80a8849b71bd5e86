"""Optimizer, learning-rate schedule and EMA of the official recipe, built from timm components."""
import torch
import torch.nn as nn
from timm.optim import create_optimizer_v2
from timm.scheduler import CosineLRScheduler
from timm.utils import ModelEmaV3

def create_optimizer(model: nn.Module, *, lr: float, weight_decay: float,
                     betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8) -> torch.optim.Optimizer:
    """AdamW; norms, biases (every 1-D parameter) and `model.no_weight_decay()` names get no decay.

    Build it after `fully_shard`, so that it holds the sharded parameters. The fused kernel updates
    all parameters in one pass (CPU and CUDA, plain tensors and FSDP2 shards). On CPU torch's
    default loops over SG-Former's ~200 tensors one at a time: 3x slower on plain tensors, 7x on
    FSDP2 shards (`benchmarks/bench_train.py --optimizer-loop`).
    """
    return create_optimizer_v2(model, opt='adamw', lr=lr, weight_decay=weight_decay, betas=betas, eps=eps,
                               fused=True)


def create_scheduler(optimizer: torch.optim.Optimizer, *, total_steps: int, warmup_steps: int,
                     warmup_lr: float = 1e-6, min_lr: float = 1e-5) -> CosineLRScheduler:
    """Linear warmup from `warmup_lr`, then cosine to `min_lr`, stepped per optimizer step
    (call `step_update(step)`)."""
    return CosineLRScheduler(
        optimizer,
        t_initial=max(total_steps - warmup_steps, 1),
        lr_min=min_lr,
        warmup_t=warmup_steps,
        warmup_lr_init=warmup_lr,
        warmup_prefix=True,
        t_in_epochs=False,
    )


def create_ema(model: nn.Module, *, decay: float, warmup: bool) -> ModelEmaV3:
    """EMA copy of `model`. Create it before sharding and shard `ema.module` like the model: its
    weights then live as shards beside the model's, and `ema.update(model, step)` lerps the shards.

    Args:
        decay: Target decay (the recipe: 0.99992).
        warmup: Ramp the decay up over the first steps (timm's warmup), for short runs whose
            step count is small next to 1 / (1 - decay).
    """
    return ModelEmaV3(model, decay=decay, use_warmup=warmup)
