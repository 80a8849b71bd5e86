"""The background thread that sends a session's queue to MLflow, so a training step never waits
on it. When MLflow cannot be reached, at the start or mid-run, the stage prints one warning line
and goes on: what is logged stays queued on disk (journal.py) and the thread tries again every
`RETRY_S` seconds; what is still queued when the stage ends waits for a replay (replay.py).
"""
import queue
import threading
import time
from pathlib import Path

from .journal import Session
from .pusher import Pusher, error_reason, print_warning
from .replay import replay, resolve_run

__all__ = ['REPLAY_COMMAND', 'RETRY_S', 'Sender']

RETRY_S = 60.0  # after a failure, the sender tries MLflow again this much later
REPLAY_COMMAND = 'python -m pipeline.tools.replay_tracking'


class Sender(threading.Thread):
    """Sends the session's operations to MLflow in the background, in order. When MLflow fails
    they stay queued (they are on disk already): it warns once and tries again every RETRY_S s.

    Args:
        session: the session whose operations it sends.
        header: the session's header (where to send them).
        root: the offline root, where older sessions of the same URI may wait.
    """

    def __init__(self, session: Session, header: dict, root: Path):
        super().__init__(daemon=True, name='sgformer-tracking')
        self.session, self.header, self.root = session, header, root
        self.uri = header['tracking_uri']
        self.inbox: queue.SimpleQueue = queue.SimpleQueue()
        self.pending: list[dict] = []
        self.pushed, self.pusher = 0, None
        self.retry_at, self.resync, self.warned = 0.0, False, False
        self.stopping = threading.Event()

    @property
    def failing(self) -> bool:
        return self.retry_at > 0

    def connect(self) -> str | None:
        """Reach MLflow now, as the caller needs the run id; None when MLflow is out of reach."""
        try:
            self._reach()
            return self.pusher.run_id
        except Exception as e:  # whatever MLflow raises: the run goes on offline
            self._failed(e)
            return None

    def _reach(self) -> None:
        """Look the experiment up, replay older sessions of this URI (first, so that a killed
        session of the same run is marked KILLED before this one continues it, and a model this
        session's metrics link to is logged before them), then find or create the run."""
        pusher = Pusher(self.uri, self.header, self.root)
        self._replay_older(pusher.client)
        self.session.save_state(resolve_run(pusher), self.pushed)
        self.pusher = pusher

    def _replay_older(self, client) -> None:
        """Replay the waiting sessions of this URI; one that fails (MLflow refuses an operation)
        stays for the replay command and does not keep this run from being tracked."""
        _, failed = replay(self.root, only_uri=self.uri, client=client)
        if failed:
            print_warning(f'{len(failed)} tracking session(s) waiting in {self.root} could not be replayed '
                          f'({failed[0][1]}); they stay there for `{REPLAY_COMMAND}`')

    def put(self, op: dict) -> None:
        """Send `op` (already on disk) after the operations before it."""
        self.inbox.put(op)

    def run(self) -> None:
        while True:
            self._collect()
            if self.pending and time.monotonic() >= self.retry_at:
                self._push()
            if self.stopping.is_set() and self.inbox.empty() and (not self.pending or self.failing):
                return

    def _collect(self) -> None:
        try:
            self.pending.append(self.inbox.get(timeout=0.2))
            while True:
                self.pending.append(self.inbox.get_nowait())
        except queue.Empty:
            pass

    def _push(self) -> None:
        try:
            if self.pusher is None:  # offline since the start: the run may not exist yet
                self._reach()
            self.pusher.push(self.pending, dedup=self.resync)
        except Exception as e:  # whatever MLflow raises: keep the operations, try later
            self._failed(e)
            return
        self.pushed += len(self.pending)
        self.pending, self.retry_at, self.resync = [], 0.0, False
        self.session.save_state(self.pusher.run_id, self.pushed)

    def _failed(self, error: BaseException) -> None:
        self.retry_at, self.resync = time.monotonic() + RETRY_S, True
        self.warn(f'MLflow at {self.uri} is unreachable ({error_reason(error)})')

    def warn(self, reason: str) -> None:
        """The stage's one line about tracking trouble: what happened and where the run waits."""
        if not self.warned:
            self.warned = True
            print_warning(f'{reason}; training goes on, tracking waits in {self.session.folder}/queue.jsonl '
                          f'for `{REPLAY_COMMAND}` or the next stage that reaches MLflow')

    def finish(self, timeout_s: float) -> bool:
        """Stop after sending what is queued (or at once while MLflow fails); True when all of the
        session reached MLflow within `timeout_s`."""
        self.stopping.set()
        self.join(timeout_s)
        return not self.is_alive() and not self.failing and self.pushed == self.session.appended
