"""Process-group setup: the same code runs as one process, under torchrun on one node, or on many."""
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistInfo:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    backend: str

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_distributed(device: str) -> DistInfo:
    """Initialise the default process group from torchrun's environment (read here, once).

    NCCL on CUDA, gloo on CPU. Without torchrun, a world of one process is created, so that
    FSDP2 and DCP run unchanged.

    Args:
        device: 'auto' (CUDA when available), 'cuda' or 'cpu'.
    """
    if device == 'auto':
        device = 'cuda' if torch.cuda.is_available() else 'cpu'
    rank = int(os.environ.get('RANK', 0))
    world_size = int(os.environ.get('WORLD_SIZE', 1))
    local_rank = int(os.environ.get('LOCAL_RANK', 0))
    backend = 'nccl' if device == 'cuda' else 'gloo'
    torch_device = torch.device('cuda', local_rank) if device == 'cuda' else torch.device('cpu')
    if device == 'cuda':
        torch.cuda.set_device(torch_device)
    if not dist.is_initialized():
        if 'MASTER_ADDR' in os.environ:
            dist.init_process_group(backend, device_id=torch_device if device == 'cuda' else None)
        else:  # a plain `python -m ...`: a private one-process world
            dist.init_process_group(backend, store=dist.HashStore(), rank=0, world_size=1)
    return DistInfo(rank, world_size, local_rank, torch_device, backend)


def destroy_distributed() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()
