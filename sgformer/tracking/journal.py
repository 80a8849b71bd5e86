"""The session folder: what a `Tracker` logged, on disk before MLflow sees it, so that an outage
loses nothing. One session, one folder:

    <tracking.offline_dir>/<session>/queue.jsonl  line 1 the session (URI, experiment, run name, the
                                                  run it continues, source tags), then one operation
                                                  per line: params, tags, metrics (with step and time
                                                  in ms; maybe the name of the run's model they are
                                                  linked to, and their dataset), artifact (a path),
                                                  dict, dataset, model (an export folder), end
                                                  (status, time)
    <tracking.offline_dir>/<session>/state.json   the run it logs into, operations that reached it
    <tracking.offline_dir>/<session>/lock         flock held while the session's process lives

A session whose operations all reached MLflow deletes its folder; any other one waits there for
`replay` (replay.py). Session names start with the UTC time, so sorting them sorts by age.

Relative places are the DVC repository's (`repository_root`), wherever the stage runs: the offline
folder, a sqlite store (`store_uri`) and the artifacts of its new experiments
(`store_artifact_location`), so that a queued experiment, which runs in a temporary copy that DVC
deletes, logs into the repository's own store.
"""
import fcntl
import json
import os
import re
import shutil
import threading
import time
import uuid
from pathlib import Path
from typing import Any

from ..config import Tracking
from ..io import write_json_atomic

__all__ = ['OFFLINE_PREFIX', 'Session', 'offline_root', 'repository_root', 'session_header', 'sessions', 'now_ms',
           'store_artifact_location', 'store_uri']

OFFLINE_PREFIX = 'offline-'  # the run id of a session that never reached MLflow: offline-<session>
SQLITE = 'sqlite:///'  # a local store: sqlite:///relative/path.db or sqlite:////absolute/path.db


def now_ms() -> int:
    """The time as MLflow records it: milliseconds since the epoch."""
    return int(time.time() * 1000)


def repository_root() -> Path:
    """The DVC repository a stage belongs to: DVC_ROOT, which DVC gives every stage. A queued or
    `--temp` experiment runs in a temporary copy (`.dvc/tmp/exps/...`) that DVC deletes afterwards;
    there DVC_ROOT names the repository it was queued in. Outside DVC: the working directory."""
    return Path(os.environ.get('DVC_ROOT') or '.').resolve()


def offline_root(tracking: Tracking) -> Path:
    """`tracking.offline_dir`; a relative one lies in the repository root (`repository_root`)."""
    folder = Path(tracking.offline_dir)
    return folder if folder.is_absolute() else repository_root() / folder


def store_uri(tracking_uri: str) -> str:
    """`tracking_uri` with a relative sqlite path made absolute in the repository root: the default
    `sqlite:///mlflow.db` is the repository's own store, also for a queued experiment (MLflow would
    take it relative to the working directory, the temporary copy)."""
    if tracking_uri.startswith(SQLITE) and not tracking_uri.startswith(SQLITE + '/'):
        return f'{SQLITE}{repository_root() / tracking_uri.removeprefix(SQLITE)}'
    return tracking_uri


def store_artifact_location(tracking_uri: str, experiment: str) -> str | None:
    """Where a new experiment of a local sqlite store keeps its artifacts: `mlruns/<experiment>`
    beside the database, wherever the stage runs (MLflow's default, `./mlruns` of the working
    directory, would go with a queued experiment's temporary copy). None for any other store: the
    store's (or the server's) own default."""
    if not tracking_uri.startswith(SQLITE + '/'):
        return None
    database = Path(tracking_uri.removeprefix(SQLITE).split('?')[0])
    return str(database.parent / 'mlruns' / re.sub(r'[^A-Za-z0-9_.-]', '_', experiment))


def session_header(tracking: Tracking, run_name: str, run_id: str | None) -> dict[str, Any]:
    """The first line of a session's queue: where it logs (`store_uri`), and the source tags MLflow's
    fluent `start_run` would set (entry point, git commit, user), taken now, not at replay."""
    from mlflow.tracking.context.registry import resolve_tags
    created = now_ms()
    stamp = time.strftime('%Y%m%dT%H%M%S', time.gmtime(created // 1000)) + f'.{created % 1000:03d}Z'
    session = f"{stamp}-{re.sub(r'[^A-Za-z0-9_-]', '_', run_name)}-{uuid.uuid4().hex[:8]}"
    return dict(op='session', session=session, created=created, tracking_uri=store_uri(tracking.tracking_uri),
                experiment=tracking.experiment, run_name=run_name, run_id=run_id, tags=resolve_tags({}))


def sessions(root: Path) -> list[Path]:
    """Session folders under `root`, oldest first (their names start with the UTC time)."""
    return sorted(p.parent for p in root.glob('*/queue.jsonl')) if root.is_dir() else []


class Session:
    """One tracker's folder: the append-only queue, the state, and the lock of its live process.

    Args:
        folder: the session's folder, `<offline root>/<session name>`.
    """

    def __init__(self, folder: Path):
        self.folder, self.name = folder, folder.name
        self._lock_file = self._queue_file = None
        self._mutex = threading.Lock()
        self.appended = 0

    @classmethod
    def create(cls, root: Path, header: dict) -> 'Session':
        """A new session under `root`, locked, its queue opened for appending and begun with `header`."""
        session = cls(root / header['session'])
        session.folder.mkdir(parents=True)
        session.try_lock()
        session._queue_file = (session.folder / 'queue.jsonl').open('a')
        session._write(header)
        return session

    def try_lock(self) -> bool:
        """Take the session's lock; False when its live process (or another replay) holds it."""
        self._lock_file = (self.folder / 'lock').open('a')
        try:
            fcntl.flock(self._lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except OSError:
            self._lock_file.close()
            self._lock_file = None
            return False

    def _write(self, record: dict) -> None:
        self._queue_file.write(json.dumps(record) + '\n')
        self._queue_file.flush()

    def append(self, op: dict) -> bool:
        """Queue `op` on disk; False once the session is closed (a late system metrics sample)."""
        with self._mutex:  # the system metrics thread logs too: one order for file and sender
            if self._queue_file is None:
                return False
            self._write(op)
            self.appended += 1
            return True

    def read(self) -> tuple[dict, list[dict]]:
        """(header, operations); a line cut short by a crash is left out."""
        records = []
        for line in (self.folder / 'queue.jsonl').read_text().splitlines():
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                continue
        return (records[0], records[1:]) if records else ({}, [])

    def state(self) -> dict:
        """`{'run_id': ..., 'pushed': n}` once the session has reached a run, else `{}`."""
        path = self.folder / 'state.json'
        return json.loads(path.read_text()) if path.is_file() else {}

    def save_state(self, run_id: str, pushed: int) -> None:
        write_json_atomic(self.folder / 'state.json', dict(run_id=run_id, pushed=pushed))

    def close(self) -> None:
        """Stop appending and release the lock; the folder stays for a replay."""
        with self._mutex:
            for handle in (self._queue_file, self._lock_file):
                if handle is not None:
                    handle.close()
            self._queue_file = self._lock_file = None

    def remove(self) -> None:
        """Delete the folder (all of it reached MLflow), and the offline root once it is empty."""
        shutil.rmtree(self.folder, ignore_errors=True)
        self.close()
        try:
            self.folder.parent.rmdir()  # the offline dir itself, once nothing waits in it
        except OSError:
            pass
