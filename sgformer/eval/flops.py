"""Multiply-accumulate counts with torch's `FlopCounterMode`, reported as MACs like the paper."""
import torch
import torch.nn as nn
from torch.utils.flop_counter import FlopCounterMode, register_flop_formula, sdpa_flop_count

# torch counts the CUDA attention kernels but not the CPU flash kernel that SDPA runs on CPU;
# without this, attention would count as free on CPU.
@register_flop_formula(torch.ops.aten._scaled_dot_product_flash_attention_for_cpu)
def _cpu_sdpa_flop(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
    return sdpa_flop_count(query_shape, key_shape, value_shape)


def count_macs(model: nn.Module, input_size: tuple[int, int, int], device: str | torch.device = 'cpu') -> int:
    """MACs of one forward pass of one image (matmuls, convolutions and attention).

    Args:
        model: Any image model; it is run once in eval mode under `no_grad`.
        input_size: `(C, H, W)`.
        device: Where to run it.

    Returns:
        Multiply-accumulates (FLOPs / 2).
    """
    was_training = model.training
    model.eval()
    counter = FlopCounterMode(display=False)
    try:
        with counter, torch.no_grad():
            model(torch.zeros(1, *input_size, device=device))
    finally:
        model.train(was_training)
    return counter.get_total_flops() // 2


def model_size(model: nn.Module, img_size: int) -> dict[str, float]:
    """Parameters (millions) and forward GMACs of one `img_size` x `img_size` image."""
    device = next(model.parameters()).device
    return dict(params_m=sum(p.numel() for p in model.parameters()) / 1e6,
                gmacs=count_macs(model, (3, img_size, img_size), device=device) / 1e9)
