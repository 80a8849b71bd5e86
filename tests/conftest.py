"""Helpers shared by the test modules."""
import signal
import subprocess
import time
from pathlib import Path

import pytest
from torch.utils._python_dispatch import TorchDispatchMode


def _kill_when(command: list[str], appears, *, cwd: Path, env: dict[str, str], timeout: float = 400) -> Path:
    """Start `command` in its own process group and `kill -9` the whole group the moment
    `appears()` returns a path (polled every millisecond); returns that path."""
    launch = subprocess.Popen(command, cwd=cwd, env=env, start_new_session=True,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + timeout
    while (found := appears()) is None:
        assert launch.poll() is None, 'the command ended before the moment to kill it'
        assert time.monotonic() < deadline
        time.sleep(0.001)
    kill_tree(launch.pid)
    launch.wait()
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
