"""Process-group setup: the same code runs as one process, under torchrun on one node, or on many.

A rank that dies or hangs never holds the others forever: the process group's collectives time out
(`runtime.collective_timeout_s`), and `peer_lost` turns what gloo raises then (a timeout, or the
connection to a dead rank closed) into a `PeerLostError` the stage ends with in one line. torchrun's
elastic agent (`launch_local`, `--max-restarts`) then restarts the node's ranks, which resume from
the newest checkpoint; each attempt keeps its keys in torchrun's store under a prefix of its own.
"""
import os
import re
import sys
from dataclasses import dataclass
from datetime import timedelta

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


class PeerLostError(RuntimeError):
    """A collective failed because another rank is gone or hung, already phrased for the user."""


def init_distributed(device: str, *, timeout_s: float | None = None) -> DistInfo:
    """Initialise the default process group from torchrun's environment (read here, once).

    NCCL on CUDA, gloo on CPU. Without torchrun, a world of one process is created, so that
    FSDP2 and DCP run unchanged.

    Args:
        device: 'auto' (CUDA when available), 'cuda' or 'cpu'.
        timeout_s: how long a collective waits for the other ranks (`runtime.collective_timeout_s`);
            None: torch's default.
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
            timeout = timedelta(seconds=timeout_s) if timeout_s is not None else None
            dist.init_process_group(backend, store=_attempt_store(timeout), rank=rank, world_size=world_size,
                                    device_id=torch_device if device == 'cuda' else None, timeout=timeout)
        else:  # a plain `python -m ...`: a private one-process world
            dist.init_process_group(backend, store=dist.HashStore(), rank=0, world_size=1)
    return DistInfo(rank, world_size, local_rank, torch_device, backend)


def _attempt_store(timeout: timedelta | None) -> dist.Store:
    """torchrun's store (MASTER_ADDR:MASTER_PORT), its keys under the attempt's own prefix: the
    elastic agent keeps one store across restarts, and a restarted group reading the keys of the
    group that died would connect to the dead ranks' addresses (gloo then fails to connect)."""
    kwargs = {} if timeout is None else dict(timeout=timeout)
    store, _, _ = next(dist.rendezvous('env://', **kwargs))
    return dist.PrefixStore(f"attempt-{os.environ.get('TORCHELASTIC_RESTART_COUNT', '0')}", store)


def destroy_distributed() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


# What gloo raises when a peer stops answering: its transport's timeout, or the socket of a dead rank.
_GLOO_TIMEOUT = re.compile(r'Timed out waiting \d+ms for \w+ operation')
_GLOO_PEER = re.compile(r'gloo/transport/\S+\] (?P<reason>.+?)(?:\. |\.?$)', re.M)


def peer_lost(error: BaseException, *, rank: int, timeout_s: float) -> PeerLostError | None:
    """The one-line error for a collective that failed because another rank died or hung past
    `timeout_s`, or None when `error` is something else."""
    text = str(error)
    if _GLOO_TIMEOUT.search(text) or isinstance(error, dist.DistBackendError) and 'timeout' in text.lower():
        return PeerLostError(f'rank {rank}: the other ranks did not answer within runtime.collective_timeout_s = '
                             f'{timeout_s:g} s (a rank is hung or dead); stopping')
    if (match := _GLOO_PEER.search(text)) or isinstance(error, dist.DistError):
        reason = match['reason'] if match else (text.splitlines() or [type(error).__name__])[0]
        return PeerLostError(f'rank {rank}: lost another rank ({reason}); stopping')
    return None


def launch_local(nproc: int, *, max_restarts: int, module: str, args: list[str]) -> int:
    """Run `python -m <module> <args>` as `nproc` ranks on this node under torchrun's elastic agent,
    which restarts them all up to `max_restarts` times when one dies. Returns the exit code: 0, or 1
    once a rank failed with no restart left. A rank that exited with 1 has said why in one line; any
    other end (a kill) is told here in one line, instead of torchrun's traceback."""
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import parse_args, run
    try:
        run(parse_args(['--standalone', f'--nproc_per_node={nproc}', f'--max-restarts={max_restarts}',
                        '-m', module, *args]))
    except ChildFailedError as e:
        rank, failure = e.get_first_failure()
        if failure.exitcode != 1:
            how = f'was killed by {failure.signal_name()}' if failure.exitcode < 0 else f'exited with {failure.exitcode}'
            print(f'error: rank {rank} {how}, with the restarts of runtime.max_restarts ({max_restarts}) used up',
                  file=sys.stderr, flush=True)
        return 1
    return 0
