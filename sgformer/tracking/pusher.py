"""What reaches MLflow: a session's operations logged into its run through `MlflowClient`, and
the bounds and one-line reports of MLflow's trouble.

MLflow does here what it already does well: `MlflowClient.log_batch` splits params, tags and
metrics into batches the server accepts (100 params or tags, 1000 entities a request), so the
pusher hands it each stretch of them whole; the source tags come from MLflow's own context
registry (journal.py); the model is logged by `mlflow.pytorch` (logged_model.py); a metric linked
to a LoggedModel is MLflow 3's `Metric(model_id=..., dataset_name=..., dataset_digest=...)` in the
same batch. Ours: the experiment marked as model training, with its artifact location in a local
store (journal.py's `store_artifact_location`), the model a metric is linked to looked up when it is
sent (it may have reached MLflow only in a replay after the metric was queued), and skipping what a
retried or replayed session already logged (finding the run a session belongs to is replay.py's:
resolving an offline run may replay the session that created it).
"""
import json
import os
import re
import sys
from pathlib import Path

from tqdm import tqdm

from .journal import store_artifact_location
from .logged_model import find_logged_model, log_export, register_model

__all__ = ['EXPERIMENT_KIND', 'Pusher', 'bound_http', 'error_reason', 'print_warning']

# MLflow's experiment kind tag and its "model training" value (the UI's CUSTOM_MODEL_DEVELOPMENT)
EXPERIMENT_KIND = ('mlflow.experimentKind', 'custom_model_development')


def bound_http(timeout_s: int) -> None:
    """Bound MLflow's HTTP calls in this process (and its children): `timeout_s` per request and
    2 retries, the second after ~2 s (an unreachable server costs ~2.5 s), instead of 7 retries
    with backoff up to 2 minutes and a 120 s timeout, which kept a finished stage waiting for a
    stopped server for a quarter of an hour. Values already in the environment win."""
    for name, value in (('MLFLOW_HTTP_REQUEST_TIMEOUT', str(timeout_s)), ('MLFLOW_HTTP_REQUEST_MAX_RETRIES', '2'),
                        ('MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR', '1'), ('MLFLOW_HTTP_REQUEST_BACKOFF_JITTER', '0.5'),
                        ('MLFLOW_DISABLE_TELEMETRY', 'true')):
        os.environ.setdefault(name, value)


def error_reason(error: BaseException, limit: int = 160) -> str:
    """The cause of an MLflow error in a few words: its OS error or the server's status when there
    is one (MLflow wraps "Connection refused", or a server's "too many 503 error responses" while its
    database is down, in three layers of messages), else its first line, cut."""
    text = f'{type(error).__name__}: {error}'
    cause = re.search(r'\[Errno -?\d+\][^\'")\n]*|too many \d+ error responses', text)
    text = cause.group(0).strip() if cause else text.strip().splitlines()[0]
    return text if len(text) <= limit else text[:limit] + '...'


def print_warning(message: str) -> None:
    """`warning: <message>` on stderr, on a line of its own: the sender thread prints while the
    trainer's progress bar is drawn, and `tqdm.write` clears the bar first and redraws it after."""
    tqdm.write(f'warning: {message}', file=sys.stderr)
    sys.stderr.flush()


class Pusher:
    """Logs a session's operations into its MLflow run, in order. Safe to repeat: with `dedup`,
    metric points the run (and, for linked ones, its model) already holds are skipped; params, tags
    and artifacts overwrite themselves, the store merges dataset inputs, and a run's model is
    logged once.

    Args:
        tracking_uri: the MLflow to log into.
        header: the session's header (journal.py's `session_header`).
        root: the offline root, where the sessions a run continues may still wait.
        client: an `MlflowClient` of `tracking_uri` to reuse, else a new one.
    """

    def __init__(self, tracking_uri: str, header: dict, root: Path, client=None):
        import mlflow
        self.uri, self.header, self.root = tracking_uri, header, root
        self.client = client or mlflow.MlflowClient(tracking_uri)
        self.experiment_id = _experiment_id(self.client, header['experiment'], tracking_uri)
        self.run_id: str | None = None  # set by replay.resolve_run
        self._model_ids: dict[tuple[str, str], str] = {}

    def push(self, ops: list[dict], *, dedup: bool = False) -> None:
        """Log `ops`; params, tags and metrics travel in batches between the other operations."""
        logged = self._logged_points(ops) if dedup else set()
        batch = dict(metrics=[], params=[], tags=[])
        for op in ops:
            if op['op'] in batch:
                batch[op['op']].extend(_entities(op, logged, self._model_id(op)))
            else:
                self._flush(batch)
                getattr(self, f"_op_{op['op']}")(op)
        self._flush(batch)

    def _model_id(self, op: dict) -> str | None:
        """The id of the run's READY model that a metrics op is linked to (`model`: its name),
        looked up now; None for an op not linked, or while the run has no such model."""
        key = (self.run_id, op.get('model'))
        if op['op'] == 'metrics' and key[1] and key not in self._model_ids:
            found = find_logged_model(self.client, self.experiment_id, self.run_id, key[1])
            if found:
                self._model_ids[key] = found
        return self._model_ids.get(key)

    def _logged_points(self, ops: list[dict]) -> set[tuple[str | None, str, int, int]]:
        """`(None, key, step, time)` of the run's metric points of these keys, `(model id, ...)` of
        the points of the models these ops are linked to."""
        keys = {key for op in ops if op['op'] == 'metrics' for key in op['metrics']}
        points = {(None, key, m.step, m.timestamp) for key in keys
                  for m in self.client.get_metric_history(self.run_id, key)}
        for model_id in {self._model_id(op) for op in ops} - {None}:
            model = self.client.get_logged_model(model_id)
            points |= {(model_id, m.key, m.step, m.timestamp) for m in model.metrics or []}
        return points

    def _flush(self, batch: dict[str, list]) -> None:
        self.client.log_batch(self.run_id, **batch)  # no request when empty; splits what is over the limits
        batch.update(metrics=[], params=[], tags=[])

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
        model_id = find_logged_model(self.client, self.experiment_id, self.run_id, op['name']) or log_export(
            op['export'], name=op['name'], step=op['step'], tracking_uri=self.uri, experiment_id=self.experiment_id,
            run_id=self.run_id)
        if op['register']:
            register_model(self.client, self.uri, model_id, op['name'])

    def _op_end(self, op: dict) -> None:
        self.client.set_terminated(self.run_id, op['status'], end_time=op['ts'])


def _entities(op: dict, logged: set, model_id: str | None) -> list:
    """An op's params, tags or metrics; metrics linked to `model_id` (and the op's dataset) when
    given, a point left out when the run (and that model) holds it already."""
    from mlflow.entities import Metric, Param, RunTag
    if op['op'] == 'params':
        return [Param(k, v) for k, v in op['params'].items()]
    if op['op'] == 'tags':
        return [RunTag(k, v) for k, v in op['tags'].items()]
    dataset = op.get('dataset') or {}
    link = dict(model_id=model_id, dataset_name=dataset.get('name'), dataset_digest=dataset.get('digest'))
    return [Metric(k, v, op['ts'], op['step'], **(link if model_id else {})) for k, v in op['metrics'].items()
            if not {(None, k, op['step'], op['ts']), (model_id, k, op['step'], op['ts'])} <= logged]


def _experiment_id(client, name: str, tracking_uri: str) -> str:
    """The experiment's id; created as a model-training experiment (`EXPERIMENT_KIND`), or marked
    as one when it was created without a kind."""
    from mlflow.exceptions import MlflowException
    tag, kind = EXPERIMENT_KIND
    experiment = client.get_experiment_by_name(name)
    if experiment is None:
        try:
            return client.create_experiment(name, artifact_location=store_artifact_location(tracking_uri, name),
                                            tags={tag: kind})
        except MlflowException:  # created meanwhile by another stage
            experiment = client.get_experiment_by_name(name)
    if tag not in experiment.tags:
        client.set_experiment_tag(experiment.experiment_id, tag, kind)
    return experiment.experiment_id
