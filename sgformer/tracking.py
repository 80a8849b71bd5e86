"""Experiment tracking in MLflow: one run per trained variant, continued by a resumed run and by
the evaluate stage. The only module that imports mlflow; only rank 0 tracks (on other ranks
`Tracker` does nothing).

Metric names: `train/...` per optimizer step (x: the step), `train/epoch_...` and `val/...` per
epoch (x: the epoch), `eval/...` from the evaluate stage, `system/...` (CPU, memory, disk,
network, GPU through nvidia-ml-py) every 10 s at the current training step. The run also holds
the export as an MLflow model (PyTorch flavour, `models:/<model id>`) and the betons as its
dataset inputs.

Outages never cost training. Every call is appended to the session's queue on disk and sent by a
background thread, so a step never waits on MLflow; MLflow's HTTP retries are bounded
(`bound_http`). When MLflow cannot be reached, at the start or mid-run, the stage prints one
warning line and goes on; the thread tries again every `RETRY_S` seconds and `Tracker.end` waits
at most `END_WAIT_TIMEOUTS` x `tracking.timeout_s`. One session, one folder:

    <tracking.offline_dir>/<session>/queue.jsonl  line 1 the session (URI, experiment, run name, the
                                                  run it continues, source tags), then one operation
                                                  per line: params, tags, metrics (with step and time
                                                  in ms), artifact (a path), dict, dataset, model
                                                  (an export folder), end (status, time)
    <tracking.offline_dir>/<session>/state.json   the run it logs into, operations that reached it
    <tracking.offline_dir>/<session>/lock         flock held while the session's process lives

A session whose operations all reached MLflow deletes its folder. Any other one is replayed by
`python -m pipeline.tools.replay_tracking` or by the next `Tracker` that reaches the same tracking URI
(the evaluate stage, a rerun of train): into the run it logged into, or the run it continues, or
a new run when it never had one (its `offline-<session>` id, kept in card.json and checkpoints,
then names that run: the run is tagged `sgformer.session`). Replaying is idempotent: metric points
the run already has (same key, step and time), the model and the datasets are not logged twice.
"""
import atexit
import fcntl
import hashlib
import json
import logging
import os
import queue
import re
import shutil
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any

from tqdm import tqdm

from .config import Data, Tracking
from .io import write_json_atomic

MLFLOW_PARAM_BATCH = 100  # mlflow's log_batch limits per call
MLFLOW_BATCH_LIMITS = {'params': MLFLOW_PARAM_BATCH, 'tags': 100, 'metrics': 1000}
RETRY_S = 60.0  # after a failure, the sender tries MLflow again this much later
END_WAIT_TIMEOUTS = 12  # Tracker.end waits at most this many tracking.timeout_s for MLflow
OFFLINE_PREFIX = 'offline-'  # the run id of a session that never reached MLflow: offline-<session>
SESSION_TAG = 'sgformer.session'  # the session that created a run
DVC_ENV_TAGS = {'DVC_EXP_NAME': 'dvc.exp_name', 'DVC_EXP_BASELINE_REV': 'dvc.exp_baseline_rev',
                'DVC_STAGE': 'dvc.stage'}
REPLAY_COMMAND = 'python -m pipeline.tools.replay_tracking'


def flatten(tree: dict[str, Any], prefix: str = '') -> dict[str, Any]:
    """`{'a': {'b': 1}}` -> `{'a.b': 1}` (how params are logged, as ffcv's params.json does)."""
    flat = {}
    for key, value in tree.items():
        name = f'{prefix}{key}'
        if isinstance(value, dict):
            flat.update(flatten(value, f'{name}.'))
        else:
            flat[name] = value
    return flat


def epoch_metric_name(key: str) -> str:
    """A per-epoch history key -> its MLflow name: `val_ema_top1` -> `val/ema_top1`,
    `train_loss` -> `train/epoch_loss`, `epoch_time_s` -> `train/epoch_time_s`."""
    if key.startswith('val_'):
        return f"val/{key.removeprefix('val_')}"
    return f"train/epoch_{key.removeprefix('train_').removeprefix('epoch_')}"


def git_dirty(cwd: str | Path = '.') -> str | None:
    """'True' / 'False' for a git checkout with / without uncommitted changes, else None (MLflow
    records the commit itself, as `mlflow.source.git.commit`)."""
    try:
        status = subprocess.run(['git', 'status', '--porcelain', '--untracked-files=no'], cwd=cwd,
                                capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return str(bool(status.stdout.strip())) if status.returncode == 0 else None


def dvc_tags() -> dict[str, str]:
    """The DVC experiment and stage this command runs in, as run tags: `dvc exp run` gives its
    stage commands DVC_EXP_NAME and DVC_EXP_BASELINE_REV, every stage DVC_STAGE (dvc/env.py)."""
    return {tag: os.environ[var] for var, tag in DVC_ENV_TAGS.items() if os.environ.get(var)}


def bound_http(timeout_s: int) -> None:
    """Bound MLflow's HTTP calls in this process (and its children): `timeout_s` per request and
    2 retries, the second after ~2 s (an unreachable server costs ~2.5 s), instead of 7 retries
    with backoff up to 2 minutes and a 120 s timeout, which kept a finished stage waiting for a
    stopped server for a quarter of an hour. Values already in the environment win."""
    for name, value in (('MLFLOW_HTTP_REQUEST_TIMEOUT', str(timeout_s)), ('MLFLOW_HTTP_REQUEST_MAX_RETRIES', '2'),
                        ('MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR', '1'), ('MLFLOW_HTTP_REQUEST_BACKOFF_JITTER', '0.5'),
                        ('MLFLOW_DISABLE_TELEMETRY', 'true')):
        os.environ.setdefault(name, value)


def offline_root(tracking: Tracking) -> Path:
    """`tracking.offline_dir`; a relative one lies in the DVC repository root (DVC_ROOT, also for
    `dvc exp run --temp`, whose workspace is deleted), else in the working directory."""
    folder = Path(tracking.offline_dir)
    return folder if folder.is_absolute() else Path(os.environ.get('DVC_ROOT') or '.').resolve() / folder


def beton_dataset(data: Data, split: str) -> dict[str, Any]:
    """One beton as an MLflow dataset: named after the image folder and the split, its source the
    image folder (`data.source`), its digest a hash of the class index and the beton's size and
    modification time (what `run_fingerprint` also trusts: hashing ImageNet's betons takes minutes)."""
    betons = Path(data.betons)
    beton, class_index = betons / f'{split}.beton', (betons / 'class_index.json').read_bytes()
    size, mtime = (beton.stat().st_size, beton.stat().st_mtime_ns) if beton.is_file() else (0, 0)  # folder backend
    digest = hashlib.sha256(class_index + f'{size}:{mtime}'.encode()).hexdigest()[:16]
    profile = dict(split=split, beton=str(beton.resolve()), bytes=size, classes=len(json.loads(class_index)))
    return dict(name=f'{Path(data.source).resolve().name}-{split}', source=str(Path(data.source).resolve()),
                digest=digest, profile=profile)


class Tracker:
    """One MLflow run, resumable by id; see the module docstring for what happens in an outage.

    Args:
        tracking: the `tracking` settings (URI, experiment, system metrics, register_model, offline_dir,
            timeout_s).
        run_name: name of a new run (the variant); also the name of its logged and registered model.
        run_id: continue this run (after a resume, or from the evaluate stage) instead of starting one;
            an `offline-<session>` id names the run that session's replay created.
        enabled: False on ranks other than 0: every method is then a no-op.
    """

    def __init__(self, tracking: Tracking, *, run_name: str, run_id: str | None = None, enabled: bool = True):
        self.enabled, self.run_id, self.last_step = enabled, run_id, 0
        if not enabled:
            return
        bound_http(tracking.timeout_s)
        self._tracking, self._run_name, self._ended = tracking, run_name, False
        root, header = offline_root(tracking), _header(tracking, run_name, run_id)
        self._session = _Session.create(root, header)
        self._sender = _Sender(self._session, header, root)
        self.run_id = self._sender.connect() or run_id or OFFLINE_PREFIX + self._session.name
        self._sender.start()
        self._system = _SystemMetrics(self) if tracking.system_metrics else None
        if self._system is not None:
            self._system.start()
        atexit.register(self._at_exit)

    @property
    def offline(self) -> bool:
        """True while MLflow is out of reach (what is logged waits in the queue)."""
        return self.enabled and self._sender.failing

    def _queue(self, op: dict) -> None:
        if self.enabled and not self._ended and self._session.append(op):
            self._sender.put(op)

    def log_params(self, params: dict[str, Any]) -> None:
        self._queue(dict(op='params', params={k: str(v) for k, v in flatten(params).items()}))

    def set_tags(self, tags: dict[str, str]) -> None:
        self._queue(dict(op='tags', tags={k: str(v) for k, v in tags.items()}))

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        """Metrics at `step`, timed now (the time travels with them through an outage)."""
        self._queue(dict(op='metrics', metrics={k: float(v) for k, v in metrics.items()}, step=int(step),
                         ts=_now_ms()))

    def log_step(self, metrics: dict[str, float], step: int) -> None:
        """Per-step training metrics, as `train/<name>` at optimizer step `step`."""
        self.last_step = step
        self.log_metrics({f'train/{k}': v for k, v in metrics.items()}, step=step)

    def log_epoch(self, record: dict[str, float]) -> None:
        """One per-epoch history record (`epoch`, `train_loss`, `val_top1`, ...) at step = epoch."""
        self.log_metrics({epoch_metric_name(k): v for k, v in record.items() if k != 'epoch'}, step=record['epoch'])

    def log_dict(self, data: dict, artifact_file: str) -> None:
        self._queue(dict(op='dict', data=data, artifact_file=artifact_file))

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        """Log a file; the queue keeps its path, so it is read when sent (or replayed)."""
        self._queue(dict(op='artifact', path=str(Path(path).resolve()), artifact_path=artifact_path))

    def log_data(self, data: Data) -> None:
        """The train and val betons as the run's dataset inputs (contexts `training`, `validation`):
        the runs table's Dataset column then shows which data a run learnt from."""
        for split, context in (('train', 'training'), ('val', 'validation')):
            self._queue(dict(op='dataset', context=context, **beton_dataset(data, split)))

    def log_model(self, export_dir: str | Path, *, step: int = 0) -> None:
        """The export's main (EMA) weights as an MLflow model of the PyTorch flavour, with a
        signature and an input example, so `mlflow.pytorch.load_model` / `mlflow.pyfunc.load_model`
        of `models:/<id>` give the export's logits; linked to the run's metrics at `step` and, with
        `tracking.register_model`, registered under the run's name."""
        if self.enabled:
            self._queue(dict(op='model', export=str(Path(export_dir).resolve()), name=self._run_name,
                             step=int(step), register=self._tracking.register_model))

    def end(self, status: str = 'FINISHED') -> None:
        """End the run; wait (bounded) for MLflow to take what is queued. The session's folder is
        deleted when everything arrived, else kept for replay with one warning line."""
        if not self.enabled or self._ended:
            return
        atexit.unregister(self._at_exit)
        if self._system is not None:
            self._system.stop()
        self._queue(dict(op='end', status=status, ts=_now_ms()))
        self._ended = True
        delivered = self._sender.finish(END_WAIT_TIMEOUTS * self._tracking.timeout_s)
        if delivered:
            self._session.remove()
        else:
            self._session.close()
            self._sender.warn(f'MLflow at {self._tracking.tracking_uri} did not take the run in time')

    def _at_exit(self) -> None:
        """A stage that dies of an exception ends its run as FAILED (kill -9: replay marks it KILLED)."""
        self.end('FAILED')


# --- the queue on disk ------------------------------------------------------------------------


def _now_ms() -> int:
    return int(time.time() * 1000)


def _header(tracking: Tracking, run_name: str, run_id: str | None) -> dict[str, Any]:
    """The first line of a session's queue: where it logs, and the source tags MLflow's fluent
    `start_run` would set (entry point, git commit, user), taken now, not at replay."""
    from mlflow.tracking.context.registry import resolve_tags
    now_ms = _now_ms()
    stamp = time.strftime('%Y%m%dT%H%M%S', time.gmtime(now_ms // 1000)) + f'.{now_ms % 1000:03d}Z'
    session = f"{stamp}-{re.sub(r'[^A-Za-z0-9_-]', '_', run_name)}-{uuid.uuid4().hex[:8]}"
    return dict(op='session', session=session, created=now_ms, tracking_uri=tracking.tracking_uri,
                experiment=tracking.experiment, run_name=run_name, run_id=run_id, tags=resolve_tags({}))


class _Session:
    """One tracker's folder: the append-only queue, the state, and the lock of its live process."""

    def __init__(self, folder: Path):
        self.folder, self.name = folder, folder.name
        self._lock_file = self._queue_file = None
        self._mutex = threading.Lock()
        self.appended = 0

    @classmethod
    def create(cls, root: Path, header: dict) -> '_Session':
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
        path = self.folder / 'state.json'
        return json.loads(path.read_text()) if path.is_file() else {}

    def save_state(self, run_id: str, pushed: int) -> None:
        write_json_atomic(self.folder / 'state.json', dict(run_id=run_id, pushed=pushed))

    def close(self) -> None:
        with self._mutex:
            for handle in (self._queue_file, self._lock_file):
                if handle is not None:
                    handle.close()
            self._queue_file = self._lock_file = None

    def remove(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)
        self.close()
        try:
            self.folder.parent.rmdir()  # the offline dir itself, once nothing waits in it
        except OSError:
            pass


def _sessions(root: Path) -> list[Path]:
    """Session folders under `root`, oldest first (their names start with the UTC time)."""
    return sorted(p for p in root.glob('*/queue.jsonl')) if root.is_dir() else []


def replay(root: str | Path, *, tracking_uri: str | None = None, only_uri: str | None = None,
           client=None) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """Replay every session under `root` whose process is gone, oldest first, each into the URI
    it was recorded for (or `tracking_uri`, through `client` when given); `only_uri` keeps the
    sessions recorded for it. A session that fails stays and does not stop the others.

    Returns:
        `(session, run id)` of each session replayed (and deleted), `(session, reason)` of each failed.
    """
    done, failed = [], []
    for queue_file in _sessions(Path(root)):
        session = _Session(queue_file.parent)
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
    """Log what one session's queue holds and the run lacks, then delete the session; returns
    the run id, or None when the session's process still runs (or another replay has it)."""
    session = _Session(Path(folder))
    if not session.folder.is_dir() or not session.try_lock():
        return None
    try:
        header, ops = session.read()
        state = session.state()
        pusher = _Pusher(tracking_uri or header['tracking_uri'], header, session.folder.parent, client=client)
        run_id = pusher.resolve(known=state.get('run_id'))
        sent = state.get('pushed', 0) if run_id == state.get('run_id') else 0  # another run: all of it
        session.save_state(run_id, sent)
        pusher.push(ops[sent:], dedup=True)
        if not ops or ops[-1]['op'] != 'end':  # its process died before ending the run
            pusher.push([dict(op='end', status='KILLED', ts=_now_ms())])
        session.remove()
        return run_id
    finally:
        session.close()


# --- MLflow ------------------------------------------------------------------------------------


def _client(tracking_uri: str):
    import mlflow
    return mlflow.MlflowClient(tracking_uri)


def error_reason(error: BaseException, limit: int = 160) -> str:
    """The cause of an MLflow error in a few words: its OS error when there is one (MLflow wraps
    "Connection refused" in three layers of messages), else its first line, cut."""
    text = f'{type(error).__name__}: {error}'
    cause = re.search(r'\[Errno -?\d+\][^\'")\n]*', text)
    text = cause.group(0).strip() if cause else text.strip().splitlines()[0]
    return text if len(text) <= limit else text[:limit] + '...'


def print_warning(message: str) -> None:
    """`warning: <message>` on stderr, on a line of its own: the sender thread prints while the
    trainer's progress bar is drawn, and `tqdm.write` clears the bar first and redraws it after."""
    tqdm.write(f'warning: {message}', file=sys.stderr)
    sys.stderr.flush()


def _chunks(items: list, size: int) -> list[list]:
    return [items[i:i + size] for i in range(0, len(items), size)]


class _Pusher:
    """Logs a session's operations into its MLflow run, in order. Safe to repeat: with `dedup`,
    metric points the run already holds are skipped; params, tags and artifacts overwrite
    themselves, the store merges dataset inputs, and a run's model is logged once."""

    def __init__(self, tracking_uri: str, header: dict, root: Path, client=None):
        self.uri, self.header, self.root = tracking_uri, header, root
        self.client = client or _client(tracking_uri)
        self.experiment_id = _experiment_id(self.client, header['experiment'])
        self.run_id: str | None = None

    def resolve(self, known: str | None = None) -> str:
        """The run to log into: `known` or the one tagged with this session (its own, from an
        earlier try), else the run the session continues (marked RUNNING again), else a new run."""
        own = known if known and self._exists(known) else self._created_by(self.header['session'])
        if own:
            self.run_id = own
            return own
        asked = self.header['run_id']
        found = self._find(asked) if asked else None
        if found:
            self.client.update_run(found, status='RUNNING')
        else:
            if asked:
                print_warning(f'MLflow run {asked} is not in {self.uri}; starting a new run')
            found = self._create()
        self.run_id = found
        return found

    def _exists(self, run_id: str) -> bool:
        from mlflow.exceptions import MlflowException
        try:
            return self.client.get_run(run_id).info.lifecycle_stage == 'active'
        except MlflowException as e:
            if e.error_code == 'RESOURCE_DOES_NOT_EXIST':
                return False
            raise

    def _find(self, ref: str) -> str | None:
        """An existing run id, or the run an `offline-<session>` session created (replaying that
        session first when it still waits here)."""
        if not ref.startswith(OFFLINE_PREFIX):
            return ref if self._exists(ref) else None
        session = ref.removeprefix(OFFLINE_PREFIX)
        return self._created_by(session) or replay_session(self.root / session, tracking_uri=self.uri,
                                                           client=self.client)

    def _created_by(self, session: str) -> str | None:
        runs = self.client.search_runs([self.experiment_id], filter_string=f"tags.`{SESSION_TAG}` = '{session}'",
                                       max_results=1)
        return runs[0].info.run_id if runs else None

    def _create(self) -> str:
        h = self.header
        tags = {**h['tags'], 'mlflow.runName': h['run_name'], SESSION_TAG: h['session']}
        return self.client.create_run(self.experiment_id, start_time=h['created'], tags=tags,
                                      run_name=h['run_name']).info.run_id

    def push(self, ops: list[dict], *, dedup: bool = False) -> None:
        """Log `ops`; params, tags and metrics travel in batches between the other operations."""
        logged = self._logged_points(ops) if dedup else set()
        batch = dict(metrics=[], params=[], tags=[])
        for op in ops:
            if op['op'] in batch:
                batch[op['op']].extend(_entities(op, logged))
            else:
                self._flush(batch)
                getattr(self, f"_op_{op['op']}")(op)
        self._flush(batch)

    def _logged_points(self, ops: list[dict]) -> set[tuple[str, int, int]]:
        keys = {key for op in ops if op['op'] == 'metrics' for key in op['metrics']}
        return {(key, m.step, m.timestamp) for key in keys for m in self.client.get_metric_history(self.run_id, key)}

    def _flush(self, batch: dict[str, list]) -> None:
        for kind, size in MLFLOW_BATCH_LIMITS.items():
            for chunk in _chunks(batch[kind], size):
                self.client.log_batch(self.run_id, **{kind: chunk})
            batch[kind] = []

    def _op_artifact(self, op: dict) -> None:
        if Path(op['path']).exists():  # a file gone since can no longer be logged
            self.client.log_artifact(self.run_id, op['path'], op['artifact_path'])

    def _op_dict(self, op: dict) -> None:
        self.client.log_dict(self.run_id, op['data'], op['artifact_file'])

    def _op_dataset(self, op: dict) -> None:
        from mlflow.data.sources import LocalArtifactDatasetSource
        from mlflow.entities import Dataset, DatasetInput, InputTag
        from mlflow.utils.mlflow_tags import MLFLOW_DATASET_CONTEXT
        dataset = Dataset(name=op['name'], digest=op['digest'], source_type='local',
                          source=LocalArtifactDatasetSource(op['source']).to_json(), profile=json.dumps(op['profile']))
        self.client.log_inputs(self.run_id, [DatasetInput(dataset, [InputTag(MLFLOW_DATASET_CONTEXT, op['context'])])])

    def _op_model(self, op: dict) -> None:
        if not (Path(op['export']) / 'card.json').is_file():  # an export deleted since cannot be logged
            return
        model_id = self._logged_model(op['name']) or _log_model(self, op)
        if op['register']:
            self._register(model_id, op['name'])

    def _logged_model(self, name: str) -> str | None:
        from mlflow.entities import LoggedModelStatus
        models = self.client.search_logged_models(
            [self.experiment_id], filter_string=f"source_run_id = '{self.run_id}' AND name = '{name}'")
        return next((m.model_id for m in models if m.status == LoggedModelStatus.READY), None)

    def _register(self, model_id: str, name: str) -> None:
        import mlflow
        uri = f'models:/{model_id}'
        if not any(v.source == uri for v in self.client.search_model_versions(f"name = '{name}'")):
            mlflow.set_tracking_uri(self.uri)
            mlflow.register_model(uri, name, await_registration_for=0)

    def _op_end(self, op: dict) -> None:
        self.client.set_terminated(self.run_id, op['status'], end_time=op['ts'])


def _entities(op: dict, logged: set) -> list:
    from mlflow.entities import Metric, Param, RunTag
    if op['op'] == 'params':
        return [Param(k, v) for k, v in op['params'].items()]
    if op['op'] == 'tags':
        return [RunTag(k, v) for k, v in op['tags'].items()]
    return [Metric(k, v, op['ts'], op['step']) for k, v in op['metrics'].items()
            if (k, op['step'], op['ts']) not in logged]


def _experiment_id(client, name: str) -> str:
    from mlflow.exceptions import MlflowException
    experiment = client.get_experiment_by_name(name)
    if experiment is not None:
        return experiment.experiment_id
    try:
        return client.create_experiment(name)
    except MlflowException:  # created meanwhile by another stage
        return client.get_experiment_by_name(name).experiment_id


def _input_example(img_size: int):
    """One normalised image of multiples of 0.5 in [-2, 2]: short in the model's JSON example."""
    import torch
    generator = torch.Generator().manual_seed(0)
    return (torch.randint(-4, 5, (1, 3, img_size, img_size), generator=generator) / 2).numpy()


def _requirements() -> list[str]:
    """Pinned, so MLflow does not spend a minute inferring them (the model unpickles with sgformer)."""
    from importlib.metadata import PackageNotFoundError, version
    import timm
    import torch
    pins = [f"torch=={torch.__version__.split('+')[0]}", f'timm=={timm.__version__}']
    try:
        return pins + [f"sgformer=={version('sgformer')}"]
    except PackageNotFoundError:
        return pins


def _log_model(pusher: _Pusher, op: dict) -> str:
    """Log the export folder's model into the pusher's run; returns the LoggedModel id. Pickled,
    not traced with torch.export (mlflow's default, 20+ s for the nano model on a CPU)."""
    import mlflow
    import mlflow.pytorch
    import torch
    from mlflow.models import infer_signature
    from .export import load_export
    model, card = load_export(op['export'], 'ema')  # model.safetensors: the EMA, or the raw weights without one
    example = _input_example(card['model_kwargs']['img_size'])
    with torch.no_grad():
        logits = model(torch.from_numpy(example)).numpy()
    mlflow.set_tracking_uri(pusher.uri)
    mlflow.set_experiment(experiment_id=pusher.experiment_id)  # where MLflow puts a LoggedModel
    pickle_warning = logging.getLogger('mlflow.pytorch')
    level = pickle_warning.level
    pickle_warning.setLevel(logging.ERROR)  # chosen knowingly: the model unpickles only with sgformer
    try:
        info = mlflow.pytorch.log_model(model, name=op['name'], run_id=pusher.run_id, step=op['step'],
                                        signature=infer_signature(example, logits), input_example=example,
                                        pip_requirements=_requirements(), serialization_format='pickle')
    finally:
        pickle_warning.setLevel(level)
    return info.model_id


# --- the threads ------------------------------------------------------------------------------


class _Sender(threading.Thread):
    """Sends the session's operations to MLflow in the background, in order. When MLflow fails
    they stay queued (they are on disk already): it warns once and tries again every RETRY_S s."""

    def __init__(self, session: _Session, header: dict, root: Path):
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
        """Reach MLflow now, as the caller needs the run id: replay older sessions of this URI
        (first, so that a killed session of the same run is marked KILLED before this one
        continues it), then find or create the run. None when MLflow is out of reach."""
        try:
            self.pusher = _Pusher(self.uri, self.header, self.root)  # looks the experiment up
            self._replay_older()
            self.session.save_state(self.pusher.resolve(), 0)
            return self.pusher.run_id
        except Exception as e:  # whatever MLflow raises: the run goes on offline
            self._failed(e)
            return None

    def _replay_older(self) -> None:
        """Replay the waiting sessions of this URI; one that fails (MLflow refuses an operation)
        stays for the replay command and does not keep this run from being tracked."""
        _, failed = replay(self.root, only_uri=self.uri, client=self.pusher.client)
        if failed:
            print_warning(f'{len(failed)} tracking session(s) waiting in {self.root} could not be replayed '
                          f'({failed[0][1]}); they stay there for `{REPLAY_COMMAND}`')

    def put(self, op: dict) -> None:
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
                self.pusher = _Pusher(self.uri, self.header, self.root)
                self.pusher.resolve()
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


class _SystemMetrics(threading.Thread):
    """CPU, memory, disk, network and GPU utilisation (MLflow's monitors; GPUs through NVML when
    nvidia-ml-py and a driver answer) every MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL (10) seconds,
    logged as `system/...` at the current training step through the queue, so that an outage
    keeps them too."""

    def __init__(self, tracker: Tracker):
        super().__init__(daemon=True, name='sgformer-system-metrics')
        self.tracker, self.monitors = tracker, _system_monitors()
        self.interval = float(os.environ.get('MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL') or 10)
        self._stop_event = threading.Event()

    def run(self) -> None:
        while not self._stop_event.wait(self.interval):
            try:
                metrics = self._sample()
            except Exception:  # a monitor that fails (psutil, NVML) costs this sample, never the run
                continue
            self.tracker.log_metrics({f'system/{k}': v for k, v in metrics.items()}, step=self.tracker.last_step)

    def _sample(self) -> dict[str, float]:
        metrics = {}
        for monitor in self.monitors:
            monitor.collect_metrics()
            metrics.update(monitor.aggregate_metrics())
            monitor.clear_metrics()
        return metrics

    def stop(self) -> None:
        self._stop_event.set()
        self.join(5)


def _system_monitors() -> list:
    from mlflow.system_metrics.metrics.cpu_monitor import CPUMonitor
    from mlflow.system_metrics.metrics.disk_monitor import DiskMonitor
    from mlflow.system_metrics.metrics.gpu_monitor import GPUMonitor
    from mlflow.system_metrics.metrics.network_monitor import NetworkMonitor
    from mlflow.system_metrics.metrics.rocm_monitor import ROCMMonitor
    monitors = [CPUMonitor(), DiskMonitor(), NetworkMonitor()]
    for gpu_monitor in (GPUMonitor, ROCMMonitor):
        try:  # no GPU, no driver or no nvidia-ml-py: no GPU metrics
            monitors.append(gpu_monitor())
            break
        except Exception:
            continue
    return monitors
