"""Distributed checkpoints (DCP): every rank writes its shard; a checkpoint counts only once complete.

Layout: `<variant folder>/<settings hash>/step-<N>/` (DCP files), one run folder per settings, so a
run of other settings never touches this one's. A save goes to `step-<N>.tmp/` and is renamed by
rank 0 after every rank has written, so a crash (or a full disk) at any moment leaves the previous
complete checkpoint and, at worst, a `.tmp` folder that is ignored and removed. A run that reached
its last epoch leaves `finished.json` in its folder.
"""
import json
import logging
import re
import shutil
import time
import uuid
from pathlib import Path
from typing import Any

import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.api import CheckpointException
from torch.distributed.checkpoint.state_dict import get_model_state_dict, get_state_dict, set_model_state_dict, set_state_dict
from torch.distributed.checkpoint.stateful import Stateful

log = logging.getLogger(__name__)
_STEP_DIR = re.compile(r'^step-(\d+)$')
FINISHED = 'finished.json'


class CheckpointFolderError(RuntimeError):
    """The checkpoint folder cannot hold this run's checkpoints, already phrased for the user."""


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
    try:
        dcp.save(state, checkpoint_id=str(tmp))
    except BaseException as e:
        if _is_main():  # a failed save (a full disk) leaves the previous checkpoint as the newest
            shutil.rmtree(tmp, ignore_errors=True)
        raise _os_error(e) or e
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


def _os_error(error: BaseException) -> OSError | None:
    """The OSError behind a failed DCP save (DCP wraps each rank's error in a CheckpointException)."""
    failures = getattr(error, 'failures', {}) if isinstance(error, CheckpointException) else {}
    return next((exc for exc, _ in failures.values() if isinstance(exc, OSError)), None)


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


def mark_finished(folder: str | Path, step: int) -> None:
    """Rank 0: record that the run in `folder` reached its last epoch."""
    if _is_main():
        Path(folder, FINISHED).write_text(json.dumps(dict(step=step, time=time.time())) + '\n')


def prune_runs(variant_folder: str | Path, current: str, keep_runs: int) -> list[Path]:
    """Rank 0: keep at most `keep_runs` run folders of other settings beside `current`; finished
    runs go first, oldest first, then the oldest unfinished ones. Returns (and logs) what it removed."""
    if not _is_main():
        return []
    others = [p for p in Path(variant_folder).iterdir() if p.is_dir() and p.name != current] \
        if Path(variant_folder).is_dir() else []
    # finished before unfinished, then oldest (last written) first
    others.sort(key=lambda p: (not (p / FINISHED).exists(), _last_written(p)))
    removed = others[:max(len(others) - keep_runs, 0)]
    for run in removed:
        state = 'finished' if (run / FINISHED).exists() else 'unfinished'
        log.warning('removing the checkpoints of an older %s run of other settings: %s (checkpoint.keep_runs=%d)',
                    state, run, keep_runs)
        shutil.rmtree(run, ignore_errors=True)
    return removed


def _last_written(run: Path) -> float:
    times = [p.stat().st_mtime for p in run.iterdir()] or [run.stat().st_mtime]
    return max(times)


def check_shared_folder(folder: str | Path) -> None:
    """Collective: make sure every rank sees the same `folder`, before any work is done.

    Every rank writes a probe file; rank 0 must see them all (a DCP checkpoint is renamed into
    place by rank 0 only, so a node-local folder would silently lose the other nodes' shards).

    Raises:
        CheckpointFolderError: some rank's probe is not visible on rank 0.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    world = dist.get_world_size() if dist.is_initialized() else 1
    if world == 1:
        return
    nonce = [uuid.uuid4().hex if _is_main() else None]
    dist.broadcast_object_list(nonce, src=0)
    probe = folder / f'.probe-{nonce[0]}-{dist.get_rank()}'
    probe.write_text('')
    dist.barrier()
    missing = [r for r in range(world) if not (folder / f'.probe-{nonce[0]}-{r}').exists()] if _is_main() else []
    verdict = [missing]
    dist.broadcast_object_list(verdict, src=0)
    dist.barrier()
    probe.unlink(missing_ok=True)
    if verdict[0]:
        raise CheckpointFolderError(
            f'{folder} is not the same folder on every rank (rank 0 does not see the files of ranks '
            f'{verdict[0]}): put --checkpoints on a filesystem all nodes share')


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
        model, optim = get_state_dict(self.model, self.optimizer)
        state = {'model': model, 'optim': optim}
        if self.ema_module is not None:
            state['ema'] = get_model_state_dict(self.ema_module)
        return state

    def load_state_dict(self, state: dict) -> None:
        set_state_dict(self.model, self.optimizer, model_state_dict=state['model'], optim_state_dict=state['optim'])
        if self.ema_module is not None:
            set_model_state_dict(self.ema_module, state['ema'])
