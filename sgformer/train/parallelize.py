"""Apply activation checkpointing, compile and FSDP2 to an SG-Former, from outside the model.

The model file knows nothing of sharding: this module reaches the blocks only through
`model.stages[i].blocks`. Order (torchtitan's): activation checkpointing, then compile, then
`fully_shard` per block and on the root.
"""
import torch
import torch.nn as nn
from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import checkpoint_wrapper
from torch.distributed.device_mesh import DeviceMesh
from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

from ..config import Runtime
from ..runtime import DTYPES, apply_compile, compile_enabled, resolve_precision


def _blocks(model: nn.Module):
    """(blocks container, index) of every transformer block."""
    for stage in model.stages:
        for j in range(len(stage.blocks)):
            yield stage.blocks, j


def apply_activation_checkpointing(model: nn.Module) -> None:
    """Recompute each block's activations in backward instead of storing them."""
    for blocks, j in _blocks(model):
        blocks[j] = checkpoint_wrapper(blocks[j], preserve_rng_state=True)


def apply_block_compile(model: nn.Module, *, backend: str = 'inductor') -> None:
    """Compile each block (static shapes): FSDP2's per-block hooks stay outside the graphs."""
    for blocks, j in _blocks(model):
        apply_compile(blocks[j], backend=backend)


def apply_fsdp(model: nn.Module, *, mesh: DeviceMesh | None, param_dtype: torch.dtype, reduce_dtype: torch.dtype) -> None:
    """`fully_shard` each block, then the root (stem, downsampling, norms, head)."""
    policy = MixedPrecisionPolicy(param_dtype=param_dtype, reduce_dtype=reduce_dtype)
    for blocks, j in _blocks(model):
        fully_shard(blocks[j], mesh=mesh, mp_policy=policy)
    fully_shard(model, mesh=mesh, mp_policy=policy)


def parallelize(model: nn.Module, runtime: Runtime, *, device: torch.device, shard: bool,
                mesh: DeviceMesh | None = None, compile_backend: str = 'inductor') -> nn.Module:
    """Activation checkpointing, compile and FSDP2 as `runtime` asks; returns the model (changed in place).

    Args:
        model: An SG-Former (anything with `stages[i].blocks`), already on `device`.
        runtime: The `runtime` settings.
        device: The device the run uses (decides 'auto' precision and compile).
        shard: Apply FSDP2 (the trainer does when the world has more than one rank). Over one rank
            it only adds copies and per-tensor DTensor dispatch, so a single process runs the
            plain module under autocast instead.
        mesh: 1-D device mesh to shard over (default: the whole default process group).
        compile_backend: torch.compile backend (tests count graphs with a counting backend).
    """
    if runtime.activation_checkpointing:
        apply_activation_checkpointing(model)
    if compile_enabled(runtime.compile, device):
        # Whole-model graphs when nothing shards (one graph per shape); per block under FSDP2.
        if shard:
            apply_block_compile(model, backend=compile_backend)
        else:
            apply_compile(model, backend=compile_backend)
    if shard:
        apply_fsdp(model, mesh=mesh, param_dtype=resolve_precision(runtime.precision, device),
                   reduce_dtype=DTYPES[runtime.reduce_dtype])
    return model
