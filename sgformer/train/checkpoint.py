"""Distributed checkpoints (DCP): every rank writes its shard; a checkpoint counts only once complete.

Layout: `<folder>/step-<N>/` (DCP files). A save goes to `step-<N>.tmp/` and is renamed by rank 0
after every rank has written, so a crash at any moment leaves either a complete checkpoint or a
`.tmp` folder that is ignored and removed.
"""
import re
import shutil
from pathlib import Path
from typing import Any

import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.stateful import Stateful

_STEP_DIR = re.compile(r'^step-(\d+)$')


def checkpoint_steps(folder: str | Path) -> list[int]:
    """Steps of the complete checkpoints in `folder`, oldest first."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    return sorted(int(m.group(1)) for p in folder.iterdir() if (m := _STEP_DIR.match(p.name)) and p.is_dir())


def save_checkpoint(folder: str | Path, step: int, state: dict[str, Stateful | Any], keep: int) -> Path:
    """Collective: save `state` as `step-<step>`, then keep only the newest `keep` checkpoints."""
    folder = Path(folder)
    final, tmp = folder / f'step-{step}', folder / f'step-{step}.tmp'
    if _is_main():
        shutil.rmtree(tmp, ignore_errors=True)
    _barrier()
    dcp.save(state, checkpoint_id=str(tmp))
    _barrier()
    if _is_main():
        shutil.rmtree(final, ignore_errors=True)
        tmp.rename(final)
        for old in checkpoint_steps(folder)[:-keep]:
            shutil.rmtree(folder / f'step-{old}', ignore_errors=True)
        for stale in folder.glob('step-*.tmp'):
            shutil.rmtree(stale, ignore_errors=True)
    _barrier()
    return final


def load_latest_checkpoint(folder: str | Path, state: dict[str, Stateful | Any]) -> int | None:
    """Collective: load the newest complete checkpoint into `state` (in place).

    Returns:
        Its step, or None when there is none.
    """
    steps = checkpoint_steps(folder)
    if not steps:
        return None
    dcp.load(state, checkpoint_id=str(Path(folder) / f'step-{steps[-1]}'))
    return steps[-1]


def _is_main() -> bool:
    return not dist.is_initialized() or dist.get_rank() == 0


def _barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


class ModelOptimizerState(Stateful):
    """Model, optimizer and EMA as one DCP entry; sharded tensors stay sharded (each rank writes
    its own shards), and loading works at another world size."""

    def __init__(self, model, optimizer, ema_module=None):
        self.model, self.optimizer, self.ema_module = model, optimizer, ema_module

    def state_dict(self) -> dict:
        from torch.distributed.checkpoint.state_dict import get_model_state_dict, get_state_dict
        model, optim = get_state_dict(self.model, self.optimizer)
        state = {'model': model, 'optim': optim}
        if self.ema_module is not None:
            state['ema'] = get_model_state_dict(self.ema_module)
        return state

    def load_state_dict(self, state: dict) -> None:
        from torch.distributed.checkpoint.state_dict import set_model_state_dict, set_state_dict
        set_state_dict(self.model, self.optimizer, model_state_dict=state['model'], optim_state_dict=state['optim'])
        if self.ema_module is not None:
            set_model_state_dict(self.ema_module, state['ema'])
