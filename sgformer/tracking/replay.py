"""Finding the run a session logs into, and replaying the sessions that did not reach MLflow
(journal.py), by `python -m pipeline.tools.replay_tracking` or by the next `Tracker` that reaches
the same tracking URI (the evaluate stage, a rerun of train). The two live together because each
may need the other: a session that continues an offline run replays the session that created it.

A session is replayed into the run it logged into, or the run it continues, or a new run when it
never had one (its `offline-<session>` id, kept in card.json and checkpoints, then names that run:
the run is tagged `sgformer.session`). Replaying is idempotent: metric points the run already has
(same key, step and time; for linked ones, that its model has too), the model and the datasets are
not logged twice. Sessions replay oldest first, so a train session's model is logged before the
evaluate session whose metrics link to it.
"""
from pathlib import Path

from .journal import OFFLINE_PREFIX, Session, now_ms, sessions
from .pusher import Pusher, error_reason, print_warning

__all__ = ['SESSION_TAG', 'replay', 'replay_session', 'resolve_run']

SESSION_TAG = 'sgformer.session'  # the session that created a run


def resolve_run(pusher: Pusher, known: str | None = None) -> str:
    """The run `pusher` logs into (also set as `pusher.run_id`): `known` or the one tagged with its
    session (its own, from an earlier try), else the run the session continues (marked RUNNING
    again), else a new run."""
    own = known if known and _exists(pusher, known) else _created_by(pusher, pusher.header['session'])
    if not own:
        asked = pusher.header['run_id']
        own = _find(pusher, asked) if asked else None
        if own:
            pusher.client.update_run(own, status='RUNNING')
        else:
            if asked:
                print_warning(f'MLflow run {asked} is not in {pusher.uri}; starting a new run')
            own = _create(pusher)
    pusher.run_id = own
    return own


def _exists(pusher: Pusher, run_id: str) -> bool:
    from mlflow.exceptions import MlflowException
    try:
        return pusher.client.get_run(run_id).info.lifecycle_stage == 'active'
    except MlflowException as e:
        if e.error_code == 'RESOURCE_DOES_NOT_EXIST':
            return False
        raise


def _find(pusher: Pusher, ref: str) -> str | None:
    """An existing run id, or the run an `offline-<session>` session created (replaying that
    session first when it still waits here)."""
    if not ref.startswith(OFFLINE_PREFIX):
        return ref if _exists(pusher, ref) else None
    session = ref.removeprefix(OFFLINE_PREFIX)
    return _created_by(pusher, session) or replay_session(pusher.root / session, tracking_uri=pusher.uri,
                                                          client=pusher.client)


def _created_by(pusher: Pusher, session: str) -> str | None:
    runs = pusher.client.search_runs([pusher.experiment_id], filter_string=f"tags.`{SESSION_TAG}` = '{session}'",
                                     max_results=1)
    return runs[0].info.run_id if runs else None


def _create(pusher: Pusher) -> str:
    h = pusher.header
    tags = {**h['tags'], 'mlflow.runName': h['run_name'], SESSION_TAG: h['session']}
    return pusher.client.create_run(pusher.experiment_id, start_time=h['created'], tags=tags,
                                    run_name=h['run_name']).info.run_id


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
        run_id = resolve_run(pusher, known=state.get('run_id'))
        sent = state.get('pushed', 0) if run_id == state.get('run_id') else 0  # another run: all of it
        session.save_state(run_id, sent)
        pusher.push(ops[sent:], dedup=True)
        if not ops or ops[-1]['op'] != 'end':  # its process died before ending the run
            pusher.push([dict(op='end', status='KILLED', ts=now_ms())])
        session.remove()
        return run_id
    finally:
        session.close()
