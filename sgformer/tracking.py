"""Experiment tracking: the MLflow run and the DVC metrics / plots files of a training run.

The only module that imports mlflow. Only rank 0 tracks; on other ranks `Tracker` does nothing.
"""
import csv
import io
import os
import subprocess
import warnings
from pathlib import Path
from typing import Any

from .io import write_json_atomic, write_text_atomic

MLFLOW_PARAM_BATCH = 100  # mlflow.log_params accepts at most 100 params per call


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


def git_tags(cwd: str | Path = '.') -> dict[str, str]:
    """Commit and dirty flag of the working tree, when it is a git checkout."""
    def git(*args: str) -> str:
        return subprocess.run(['git', *args], cwd=cwd, capture_output=True, text=True, timeout=10).stdout.strip()
    try:
        commit = git('rev-parse', 'HEAD')
    except (OSError, subprocess.SubprocessError):
        return {}
    if not commit:
        return {}
    return {'git.commit': commit, 'git.dirty': str(bool(git('status', '--porcelain', '--untracked-files=no')))}


class Tracker:
    """One MLflow run (resumable by id) plus DVC metrics and plot files.

    Args:
        enabled: False on ranks other than 0: every method is then a no-op.
        tracking_uri: MLflow store, e.g. 'sqlite:///mlflow.db'.
        experiment: MLflow experiment name.
        run_name: Name of a new run (the variant).
        run_id: Continue this run (after a resume) instead of starting one.
        system_metrics: Log CPU / GPU / memory utilisation alongside.
    """

    def __init__(self, *, enabled: bool, tracking_uri: str, experiment: str, run_name: str,
                 run_id: str | None = None, system_metrics: bool = False):
        self.enabled = enabled
        self.run_id = run_id
        if not enabled:
            return
        os.environ.setdefault('MLFLOW_DISABLE_TELEMETRY', 'true')
        import mlflow
        self._mlflow = mlflow
        mlflow.set_tracking_uri(tracking_uri)
        mlflow.set_experiment(experiment)
        if run_id is not None and not _run_exists(mlflow, run_id):
            warnings.warn(f'MLflow run {run_id} is not in {tracking_uri}; starting a new run')
            run_id = None
        run = mlflow.start_run(run_id=run_id, run_name=None if run_id else run_name, log_system_metrics=system_metrics)
        self.run_id = run.info.run_id

    def log_params(self, params: dict[str, Any]) -> None:
        if not self.enabled:
            return
        items = [(k, str(v)) for k, v in flatten(params).items()]
        for i in range(0, len(items), MLFLOW_PARAM_BATCH):
            self._mlflow.log_params(dict(items[i:i + MLFLOW_PARAM_BATCH]))

    def set_tags(self, tags: dict[str, str]) -> None:
        if self.enabled:
            self._mlflow.set_tags(tags)

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        if self.enabled:  # queued: a per-step sqlite transaction would cost ~10 ms of every step
            self._mlflow.log_metrics({k: float(v) for k, v in metrics.items()}, step=step, synchronous=False)

    def log_dict(self, data: dict, artifact_file: str) -> None:
        if self.enabled:
            self._mlflow.log_dict(data, artifact_file)

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        if self.enabled:
            self._mlflow.log_artifact(str(path), artifact_path=artifact_path)

    def end(self, status: str = 'FINISHED') -> None:
        if self.enabled:
            self._mlflow.flush_async_logging()
            self._mlflow.end_run(status=status)


def _run_exists(mlflow, run_id: str) -> bool:
    try:
        mlflow.get_run(run_id)
        return True
    except mlflow.exceptions.MlflowException:
        return False


def write_metrics(path: str | Path, metrics: dict[str, Any], enabled: bool = True) -> None:
    """A DVC metrics file (JSON), written atomically."""
    if enabled:
        write_json_atomic(path, metrics)


def write_plot(path: str | Path, rows: list[dict[str, Any]], enabled: bool = True) -> None:
    """A DVC plot file (TSV, one row per epoch), rewritten whole and atomically."""
    if not enabled or not rows:
        return
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(rows[0]), delimiter='\t', lineterminator='\n')
    writer.writeheader()
    writer.writerows(rows)
    write_text_atomic(path, buffer.getvalue())
