"""Device, precision and compile choices shared by training and evaluation (the `runtime` and
`eval` settings resolve here; the same rules on a laptop CPU and on a GPU node)."""
from contextlib import nullcontext

import torch
import torch.nn as nn

DTYPES = {'float32': torch.float32, 'bfloat16': torch.bfloat16}


def resolve_device(setting: str) -> torch.device:
    """'auto': CUDA when available, else CPU; 'cuda' / 'cpu' as given."""
    if setting == 'auto':
        setting = 'cuda' if torch.cuda.is_available() else 'cpu'
    return torch.device(setting)


def resolve_precision(setting: str, device: torch.device) -> torch.dtype:
    """'auto': bfloat16 on CUDA (the recipe's AMP), float32 on CPU."""
    if setting == 'auto':
        return torch.bfloat16 if device.type == 'cuda' else torch.float32
    return DTYPES[setting]


def compile_enabled(setting: bool | str, device: torch.device) -> bool:
    """'auto': compile on CUDA only (inductor's CPU codegen takes minutes for a few minutes of training)."""
    return device.type == 'cuda' if setting == 'auto' else bool(setting)


def autocast(device: torch.device, dtype: torch.dtype):
    """Autocast to `dtype` for the matmul-heavy ops; a no-op context for float32."""
    if dtype == torch.float32:
        return nullcontext()
    return torch.autocast(device.type, dtype=dtype)


def apply_compile(module: nn.Module, *, backend: str = 'inductor') -> None:
    """`torch.compile` a module in place, static shapes (one graph per input shape).

    Every block of every stage shares `Block.forward`'s code object, so dynamo keeps one cache
    entry per (block kind, shape, train/eval); the default limit of 8 would silently fall back to
    eager for the later ones.
    """
    torch._dynamo.config.cache_size_limit = max(torch._dynamo.config.cache_size_limit, 64)
    torch._dynamo.config.accumulated_cache_size_limit = max(torch._dynamo.config.accumulated_cache_size_limit, 512)
    module.compile(dynamic=False, backend=backend)
