"""Helpers shared by the test modules."""
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from torch.utils._python_dispatch import TorchDispatchMode

ROOT = Path(__file__).resolve().parents[1]
GIT = ['git', '-c', 'user.name=t', '-c', 'user.email=t@t']


class Launch:
    """A command started in a session of its own (torchrun's process tree below it), its stderr
    kept in `log` when given.

    Args:
        command: the argv to run.
        cwd, env: its working directory and environment.
        log: the file its stderr goes to (None: discarded, as its stdout always is).
    """

    def __init__(self, command: list[str], *, cwd: Path, env: dict[str, str], log: Path | None = None):
        self.log = log
        with open(log, 'w') if log is not None else open(os.devnull, 'w') as err:
            self.process = subprocess.Popen(command, cwd=cwd, env=env, start_new_session=True,
                                            stdout=subprocess.DEVNULL, stderr=err)

    def wait_for(self, appears, timeout: float = 400):
        """Poll `appears()` every millisecond until it returns something other than None; returns it."""
        deadline = time.monotonic() + timeout
        while (found := appears()) is None:
            assert self.process.poll() is None, 'the command ended before the moment it waited for'
            assert time.monotonic() < deadline, f'nothing appeared within {timeout} s'
            time.sleep(0.001)
        return found

    def rank(self, rank: int):
        """The `psutil.Process` of the torchrun worker of global rank `rank` below the command."""
        import psutil
        for child in psutil.Process(self.process.pid).children(recursive=True):
            try:
                if child.environ().get('RANK') == str(rank) and 'LOCAL_RANK' in child.environ():
                    return child
            except psutil.NoSuchProcess:
                continue
        raise AssertionError(f'no process of rank {rank} below {self.process.pid}')

    def finish(self, timeout: float = 600) -> tuple[int, str]:
        """Wait for the command to end; returns its exit code and its stderr."""
        code = self.process.wait(timeout)
        return code, self.log.read_text() if self.log is not None else ''


def _kill_when(command: list[str], appears, *, cwd: Path, env: dict[str, str], timeout: float = 400) -> Path:
    """Start `command` in its own process group and `kill -9` the whole group the moment
    `appears()` returns a path (polled every millisecond); returns that path."""
    launch = Launch(command, cwd=cwd, env=env)
    found = launch.wait_for(appears, timeout)
    kill_tree(launch.process.pid)
    launch.process.wait()
    return found


def kill_tree(pid: int) -> None:
    """SIGKILL a process and all its descendants at once (torchrun starts its ranks in sessions
    of their own, so killing the launcher's process group would leave them running)."""
    import psutil
    root = psutil.Process(pid)
    family = [root, *root.children(recursive=True)]
    for process in family:
        try:
            process.send_signal(signal.SIGKILL)
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(family, timeout=30)


@pytest.fixture
def kill_when():
    """`kill_when(command, appears, cwd=..., env=...)`: kill -9 a process group at a chosen moment."""
    return _kill_when


class CountOps(TorchDispatchMode):
    """Counts the aten ops dispatched inside the `with` block."""

    def __init__(self):
        super().__init__()
        self.count = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.count += 1
        return func(*args, **(kwargs or {}))


# --- a throwaway copy of the repository, for DVC (tests/pipeline/test_dvc_repro.py, tests/launch/)

def shrink(params: dict) -> dict:
    """The demo's params.yaml at seconds per stage: 3 classes of a few images, 1 epoch of tiny batches."""
    params['sample'].update(num_classes=3, train_per_class=8, val_per_class=3)
    params['convert'].update(max_bad_fraction=0.2)  # 2 broken files of ~40
    params['loader'].update(num_workers=1)
    params['train'].update(epochs=1, batch_size=8, warmup_epochs=0)
    params['eval'].update(speed_steps=1, speed_batch_size=2, resolutions=[96], num_pictures=2)
    params['tracking'].update(system_metrics=False)
    return params


def project_venv() -> Path:
    """The environment the stages run with: this checkout's .venv, else this interpreter's prefix."""
    return ROOT / '.venv' if (ROOT / '.venv').exists() else Path(sys.executable).resolve().parents[1]


def copy_repo(dest: Path) -> None:
    """The tracked files (as they are in the working tree) in a fresh git repository, with this
    checkout's .venv linked in."""
    files = subprocess.run(['git', 'ls-files', '-z'], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    for rel in filter(None, files.split('\0')):
        if (ROOT / rel).is_file():
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / rel, dest / rel)
    (dest / 'dvc.lock').unlink(missing_ok=True)
    (dest / '.venv').symlink_to(project_venv())
    subprocess.run(['git', 'init', '-q'], cwd=dest, check=True)
    commit(dest, 'copy')


def commit(repo: Path, message: str) -> None:
    subprocess.run(GIT + ['add', '-A'], cwd=repo, check=True)
    subprocess.run(GIT + ['commit', '-qm', message], cwd=repo, check=True)
