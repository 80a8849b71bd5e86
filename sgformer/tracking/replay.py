"""Replaying the sessions that did not reach MLflow (journal.py), by `python -m
pipeline.tools.replay_tracking` or by the next `Tracker` that reaches the same tracking URI (the
evaluate stage, a rerun of train).

A session is replayed into the run it logged into, or the run it continues, or a new run when it
never had one (its `offline-<session>` id, kept in card.json and checkpoints, then names that run:
the run is tagged `sgformer.session`). Replaying is idempotent: metric points the run already has
(same key, step and time), the model and the datasets are not logged twice.
"""
from pathlib import Path

from .journal import Session, now_ms, sessions
from .pusher import Pusher, error_reason

__all__ = ['replay', 'replay_session']


def replay(root: str | Path, *, tracking_uri: str | None = None, only_uri: str | None = None,
           client=None) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """Replay every session under `root` whose process is gone, oldest first, each into the URI
    it was recorded for (or `tracking_uri`, through `client` when given); `only_uri` keeps the
    sessions recorded for it. A session that fails stays and does not stop the others.

    Returns:
        `(session, run id)` of each session replayed (and deleted), `(session, reason)` of each failed.
    """
    done, failed = [], []
    for folder in sessions(Path(root)):
        session = Session(folder)
        header = session.read()[0]
        if not header or (only_uri is not None and header['tracking_uri'] != only_uri):
            continue  # (no header: its process died while creating it)
        try:
            run_id = replay_session(session.folder, tracking_uri=tracking_uri or only_uri, client=client)
        except Exception as e:  # whatever MLflow raises: this session waits for the next replay
            failed.append((session.name, error_reason(e)))
            continue
        if run_id is not None:
            done.append((session.name, run_id))
    return done, failed


def replay_session(folder: str | Path, *, tracking_uri: str | None = None, client=None) -> str | None:
    """Log what one session's queue holds and the run lacks, then delete the session.

    Args:
        folder: the session's folder.
        tracking_uri: log there instead of the URI the session recorded.
        client: an `MlflowClient` of that URI to reuse.

    Returns:
        The run id, or None when the session's process still runs (or another replay has it).
    """
    session = Session(Path(folder))
    if not session.folder.is_dir() or not session.try_lock():
        return None
    try:
        header, ops = session.read()
        state = session.state()
        pusher = Pusher(tracking_uri or header['tracking_uri'], header, session.folder.parent, client=client)
        run_id = pusher.resolve(known=state.get('run_id'))
        sent = state.get('pushed', 0) if run_id == state.get('run_id') else 0  # another run: all of it
        session.save_state(run_id, sent)
        pusher.push(ops[sent:], dedup=True)
        if not ops or ops[-1]['op'] != 'end':  # its process died before ending the run
            pusher.push([dict(op='end', status='KILLED', ts=now_ms())])
        session.remove()
        return run_id
    finally:
        session.close()
