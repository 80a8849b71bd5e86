"""Experiment tracking in MLflow: one run per trained variant, continued by a resumed run and by
the evaluate stage. The only package that imports mlflow (inside functions, so importing it stays
cheap); only rank 0 tracks (on other ranks `Tracker` does nothing).

Metric names: `train/...` per optimizer step (x: the step), `train/epoch_...` and `val/...` per
epoch (x: the epoch), `eval/...` from the evaluate stage, `system/...` (CPU, memory, disk,
network, GPU through nvidia-ml-py) every 10 s at the current training step. The run also holds
the export as an MLflow model (PyTorch flavour, `models:/<model id>`) carrying the last epoch's
metrics and the `eval/...` ones (measured on the val beton), the betons as its dataset inputs and
a one-line description; the experiment is marked as model training (`mlflow.experimentKind`).

Files:
    tracker.py         `Tracker`, what the stages log through
    journal.py         the session folder: the queue on disk that outlives an MLflow outage; where a
                       relative store and offline folder lie (the DVC repository's)
    sender.py          the thread that sends the queue to MLflow, retrying while it is out of reach
    replay.py          finding a session's run; `replay` / `replay_session`: sessions sent later
    pusher.py          the operations logged into a run through `MlflowClient`; bounded HTTP, warnings
    logged_model.py    an export as an MLflow LoggedModel, and its registration
    system_metrics.py  the `system/...` sampler (MLflow's monitors), logging through the queue
    context.py         params as dotted keys, metric names, git / DVC tags, descriptions, the betons as datasets
"""
from .context import (DVC_ENV_TAGS, NOTE_TAG, beton_dataset, dvc_tags, epoch_metric_name, flatten, git_dirty,
                      run_description)
from .journal import OFFLINE_PREFIX, offline_root
from .pusher import EXPERIMENT_KIND, bound_http, error_reason, print_warning
from .replay import SESSION_TAG, replay, replay_session
from .tracker import Tracker

__all__ = ['DVC_ENV_TAGS', 'EXPERIMENT_KIND', 'NOTE_TAG', 'OFFLINE_PREFIX', 'SESSION_TAG', 'Tracker', 'beton_dataset',
           'bound_http', 'dvc_tags', 'epoch_metric_name', 'error_reason', 'flatten', 'git_dirty', 'offline_root',
           'print_warning', 'replay', 'replay_session', 'run_description']
