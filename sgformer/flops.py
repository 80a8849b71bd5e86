"""FLOP counts with torch's `FlopCounterMode`: MACs of a forward pass (as the paper reports them),
FLOPs of a training step, and the model FLOPs utilisation (MFU) against a device's peak."""
import torch
import torch.nn as nn
from torch.utils.flop_counter import (FlopCounterMode, conv_backward_flop, conv_flop_count, get_shape,
                                      register_flop_formula, sdpa_flop_count)

# Peak dense bf16 tensor FLOP/s of common cards (their data sheets, without sparsity), matched
# against `torch.cuda.get_device_name()` in order: the first name that appears in it counts.
PEAK_BF16_FLOPS = (
    ('H100 NVL', 835e12), ('H100 PCIe', 756e12), ('H100', 989e12), ('H200', 989e12), ('GH200', 989e12),
    ('B200', 2250e12), ('A100', 312e12), ('A800', 312e12), ('L40S', 362e12), ('L40', 181e12), ('L4', 121e12),
    ('A10G', 70e12), ('A10', 125e12), ('A6000', 155e12), ('RTX 4090', 165e12), ('RTX 3090', 71e12),
    ('MI300X', 1307e12), ('MI250X', 383e12),
)

# torch counts the CUDA attention kernels but not the CPU flash kernel that SDPA runs on CPU;
# without this, attention would count as free on CPU.
@register_flop_formula(torch.ops.aten._scaled_dot_product_flash_attention_for_cpu)
def _cpu_sdpa_flop(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
    return sdpa_flop_count(query_shape, key_shape, value_shape)


def _grouped_conv_backward_flop(grad_out_shape, x_shape, w_shape, bias, stride, padding, dilation, transposed,
                                output_padding, groups, output_mask, *, out_shape, **kwargs) -> int:
    """torch's count, with the weight gradient of a grouped (e.g. depthwise) convolution divided
    by its groups: torch's formula ignores them, counting SG-Former's depthwise backward 50x."""
    # torch's formula as registered (shape-wrapped: it takes the output as `out_val`)
    total = conv_backward_flop(grad_out_shape, x_shape, w_shape, bias, stride, padding, dilation, transposed,
                               output_padding, groups, output_mask, out_val=out_shape, **kwargs)
    if output_mask[1] and groups > 1 and not transposed:
        t = lambda shape: [shape[1], shape[0], *shape[2:]]  # noqa: E731  (torch's own transpose of N and C)
        weight_grad = conv_flop_count(t(x_shape), t(grad_out_shape), t(list(get_shape(out_shape[1]))), transposed=False)
        total -= weight_grad - weight_grad // groups
    return total


# torch's registry refuses a second formula for an op; a counter takes this one instead of its own
TRAIN_FORMULAS = {torch.ops.aten.convolution_backward: _grouped_conv_backward_flop}


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


def train_step_flops(model: nn.Module, img_size: int, device: str | torch.device = 'cpu') -> int:
    """FLOPs of one training image at `img_size`: forward and backward of `model` (train mode,
    gradients kept off its parameters). A step of B images costs B times this."""
    was_training = model.training
    model.train()
    counter = FlopCounterMode(display=False, custom_mapping=TRAIN_FORMULAS)
    try:
        with counter:
            model(torch.zeros(1, 3, img_size, img_size, device=device)).float().sum().backward()
    finally:
        model.zero_grad(set_to_none=True)
        model.train(was_training)
    return counter.get_total_flops()


def peak_flops(device: torch.device) -> float | None:
    """Peak dense bf16 FLOP/s of `device` from `PEAK_BF16_FLOPS`; None on the CPU or an unknown card."""
    if device.type != 'cuda':
        return None
    name = torch.cuda.get_device_name(device)
    return next((flops for card, flops in PEAK_BF16_FLOPS if card in name), None)


def mfu(flops_per_step: float, steps_per_s: float, peak_per_device: float | None, devices: int) -> float | None:
    """Model FLOPs utilisation: achieved FLOP/s over the peak of all devices (None without a peak)."""
    return None if not peak_per_device else flops_per_step * steps_per_s / (peak_per_device * devices)
