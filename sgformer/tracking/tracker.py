"""`Tracker`: one MLflow run, the only object the stages log through.

Every call is appended to the session's queue on disk (journal.py) and sent by a background
thread (sender.py), so a step never waits on MLflow, and MLflow's HTTP retries are bounded
(`bound_http`). An outage never costs training: the stage prints one warning line and goes on,
and `Tracker.end` waits at most `END_WAIT_TIMEOUTS` x `tracking.timeout_s` before leaving the
session to a replay (replay.py).
"""
import atexit
from pathlib import Path
from typing import Any

from ..config import Data, Tracking
from .context import NOTE_TAG, beton_dataset, epoch_metric_name, flatten
from .journal import OFFLINE_PREFIX, Session, now_ms, offline_root, session_header
from .pusher import bound_http
from .sender import Sender
from .system_metrics import SystemMetrics

__all__ = ['END_WAIT_TIMEOUTS', 'Tracker']

END_WAIT_TIMEOUTS = 12  # Tracker.end waits at most this many tracking.timeout_s for MLflow


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
        root, header = offline_root(tracking), session_header(tracking, run_name, run_id)
        self._session = Session.create(root, header)
        self._sender = Sender(self._session, header, root)
        self.run_id = self._sender.connect() or run_id or OFFLINE_PREFIX + self._session.name
        self._sender.start()
        self._system = SystemMetrics(self.log_metrics, lambda: self.last_step) if tracking.system_metrics else None
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
        """Nested params, logged flat with dotted keys (`train.lr`)."""
        self._queue(dict(op='params', params={k: str(v) for k, v in flatten(params).items()}))

    def set_tags(self, tags: dict[str, str]) -> None:
        self._queue(dict(op='tags', tags={k: str(v) for k, v in tags.items()}))

    def describe(self, text: str) -> None:
        """The run's description (`mlflow.note.content`, the run page's Description)."""
        self.set_tags({NOTE_TAG: text})

    def log_metrics(self, metrics: dict[str, float], step: int, *, model: str | None = None,
                    dataset: dict[str, Any] | None = None) -> None:
        """Metrics at `step`, timed now (the time travels with them through an outage).

        Args:
            model: also link them to the run's logged model of this name (MLflow 3's `model_id`),
                so that the model carries them (the experiment's Models page); the model is looked
                up when they are sent, so one still waiting in an older session's queue gets them
                once that session is replayed first. While the run has no such model they are
                the run's alone.
            dataset: what they were measured on, with the link (`beton_dataset`: name and digest).
        """
        op = dict(op='metrics', metrics={k: float(v) for k, v in metrics.items()}, step=int(step), ts=now_ms())
        if model:
            op.update(model=model, dataset=dataset and dict(name=dataset['name'], digest=dataset['digest']))
        self._queue(op)

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
        self._queue(dict(op='end', status=status, ts=now_ms()))
        self._ended = True
        delivered = self._sender.finish(END_WAIT_TIMEOUTS * self._tracking.timeout_s)
        if delivered:
            self._session.remove()
        else:
            self._session.close()
            self._sender.warn(f'MLflow at {self._sender.uri} did not take the run in time')

    def _at_exit(self) -> None:
        """A stage that dies of an exception ends its run as FAILED (kill -9: replay marks it KILLED)."""
        self.end('FAILED')
