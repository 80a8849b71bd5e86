"""Tracking against a real `mlflow server` on 127.0.0.1, queried back through the client API: two
variants' runs with their params diff, metric histories, artifacts, dataset inputs, logged and
registered models that load back to the export's logits; and outages (server killed mid-run,
nothing listening from the start) that cost no training and are replayed, once, later.

A team's server (the README's "A team's tracking and data"): `mlflow server` on PostgreSQL with
its artifacts proxied into a folder, the database stopped under a running stage.

The stage tests (slow) run the real `python -m pipeline.train` on a tiny generated sample."""
import importlib.util
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import mlflow
import mlflow.models
import mlflow.pyfunc
import mlflow.pytorch
import pytest
import timm
import torch
from tqdm import tqdm

import sgformer.models  # noqa: F401  (registers the sgformer_* models with timm)
from sgformer.config import Data, Sample, Tracking, load_params
from sgformer.datasets.sample import write_sample
from sgformer.export import save_export
from sgformer.tracking import OFFLINE_PREFIX, SESSION_TAG, Tracker, beton_dataset, dvc_tags, print_warning, replay

ROOT = Path(__file__).resolve().parents[1]
MLFLOW = str(Path(sys.executable).parent / 'mlflow')
_spec = importlib.util.spec_from_file_location('stage_test_train', ROOT / 'tests' / 'pipeline' / 'test_train.py')
stage = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(stage)  # the train stage test's params and command


def free_port() -> int:
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


class Server:
    """`mlflow server` on 127.0.0.1, restartable on the same store and port: over a sqlite store in
    `folder` with artifacts written by the clients there, or over `backend_store_uri` (a team's
    database) with artifacts proxied into `artifacts_destination` (`--serve-artifacts`)."""

    def __init__(self, folder: Path, port: int | None = None, *, backend_store_uri: str | None = None,
                 artifacts_destination: Path | None = None):
        self.folder, self.port = folder, port or free_port()
        self.uri = f'http://127.0.0.1:{self.port}'
        self.backend_store_uri = backend_store_uri or f'sqlite:///{folder}/mlflow.db'
        self.artifacts_destination = artifacts_destination
        self.proc: subprocess.Popen | None = None

    def start(self) -> 'Server':
        artifacts = ['--default-artifact-root', str(self.folder / 'mlruns')] if self.artifacts_destination is None \
            else ['--artifacts-destination', str(self.artifacts_destination), '--serve-artifacts']
        cmd = [MLFLOW, 'server', '--host', '127.0.0.1', '--port', str(self.port), '--workers', '1',
               '--backend-store-uri', self.backend_store_uri, *artifacts]
        env = dict(os.environ, MLFLOW_DISABLE_TELEMETRY='true', MLFLOW_SERVER_ENABLE_JOB_EXECUTION='false')
        with (self.folder / 'server.log').open('a') as log:
            self.proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + 180  # a new database: MLflow creates its tables first
        while not self.healthy():
            assert self.proc.poll() is None, (self.folder / 'server.log').read_text()[-3000:]
            assert time.monotonic() < deadline, 'mlflow server did not answer /health'
            time.sleep(0.3)
        return self

    def healthy(self) -> bool:
        try:
            with urllib.request.urlopen(f'{self.uri}/health', timeout=2) as response:
                return response.status == 200
        except OSError:
            return False

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, sig)
            self.proc.wait(30)
        self.proc = None


@pytest.fixture(scope='module')
def server(tmp_path_factory):
    running = Server(tmp_path_factory.mktemp('mlflow')).start()
    yield running
    running.stop()


@pytest.fixture
def own_server(tmp_path):
    """A server of this test alone (it gets killed); stopped at the end whatever happened."""
    (tmp_path / 'store').mkdir()
    created = Server(tmp_path / 'store')
    yield created
    created.stop()


@pytest.fixture(scope='module')
def export(tmp_path_factory) -> Path:
    """A tiny sgformer_nano export with distinct EMA and raw weights."""
    folder = tmp_path_factory.mktemp('export') / 'nano'
    kwargs = dict(img_size=64, num_classes=3, drop_path_rate=0.0)
    torch.manual_seed(0)
    ema, raw = (timm.create_model('sgformer_nano', **kwargs).state_dict() for _ in range(2))
    save_export(folder, model_name='sgformer_nano', model_kwargs=kwargs, weights=dict(ema=ema, raw=raw),
                class_index={'n01': 0, 'n02': 1, 'n03': 2}, card=dict(variant='nano'))
    return folder


@pytest.fixture
def betons(tmp_path) -> Data:
    """Stand-ins for the betons (the dataset inputs describe them by class index, size and time)."""
    folder = tmp_path / 'betons'
    folder.mkdir()
    (folder / 'class_index.json').write_text(json.dumps({'n01': 0, 'n02': 1, 'n03': 2}))
    for split in ('train', 'val'):
        (folder / f'{split}.beton').write_bytes(split.encode() * 100)
    (tmp_path / 'imagenet').mkdir()
    return Data(source=str(tmp_path / 'imagenet'), betons=str(folder))


def export_logits(export: Path, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return timm.create_model(f'local-dir:{export}', pretrained=True).eval()(x)


def warnings_in(stderr: str) -> list[str]:
    """The warning lines (tqdm's bars end in a carriage return, not a newline)."""
    return [line for line in re.split(r'[\r\n]', stderr) if line.startswith('warning:')]


def log_fake_training(tracker: Tracker, steps: range, epochs: range, steps_per_epoch: int = 2) -> None:
    """What `Trainer.fit` logs: per-step windows and per-epoch records."""
    for step in steps:
        tracker.log_step(dict(loss=1.0 / step, lr=1e-3, img_s=100.0, skipped_steps=0.0), step=step)
    for epoch in epochs:
        tracker.log_epoch(dict(epoch=epoch, train_loss=0.5 / (epoch + 1), lr=1e-3, epoch_time_s=1.0,
                               val_top1=0.3 + epoch / 10, val_ema_top1=0.2 + epoch / 10))


VARIANTS = """
variants:
  nano: {model: sgformer_nano}
  nano_dp: {model: sgformer_nano, drop_path_rate: 0.1}
"""


@pytest.mark.timeout(300)
def test_two_variants_params_metrics_artifacts_datasets_models(server, export, betons, tmp_path, monkeypatch):
    monkeypatch.setenv('DVC_EXP_NAME', 'pious-chin')
    monkeypatch.setenv('MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL', '0.2')
    (tmp_path / 'params.yaml').write_text(VARIANTS)
    params = load_params(tmp_path / 'params.yaml')
    run_ids = {}
    for name in params.variants:
        tracking = Tracking(tracking_uri=server.uri, experiment='variants', system_metrics=name == 'nano',
                            register_model=name == 'nano_dp', offline_dir=str(tmp_path / 'offline'))
        tracker = Tracker(tracking, run_name=name)
        tracker.log_params(params.run_settings(name))
        tracker.set_tags(dict(variant=name, **dvc_tags()))
        tracker.log_data(betons)
        log_fake_training(tracker, range(1, 5), range(2))
        time.sleep(0.6)  # a few system metrics samples
        for file in sorted(export.iterdir()):
            tracker.log_artifact(file, 'model')
        tracker.log_model(export, step=1)
        tracker.end()
        run_ids[name] = tracker.run_id
    assert not (tmp_path / 'offline').exists()  # everything arrived: no queue left

    client = mlflow.MlflowClient(server.uri)
    runs = {name: client.get_run(run_id) for name, run_id in run_ids.items()}
    a, b = runs['nano'].data.params, runs['nano_dp'].data.params
    assert a.keys() == b.keys()
    assert {k for k in a if a[k] != b[k]} == {'variant', 'train.drop_path_rate'}
    for name, run in runs.items():
        assert run.info.status == 'FINISHED' and run.info.run_name == name
        assert run.data.tags['dvc.exp_name'] == 'pious-chin' and run.data.tags['variant'] == name
        history = client.get_metric_history(run.info.run_id, 'train/loss')
        assert [(m.step, m.value) for m in history] == [(s, 1.0 / s) for s in range(1, 5)]
        assert [m.step for m in client.get_metric_history(run.info.run_id, 'val/ema_top1')] == [0, 1]
        assert {x.path for x in client.list_artifacts(run.info.run_id, 'model')} == \
            {'model/card.json', 'model/config.json', 'model/model.safetensors', 'model/raw.safetensors'}
        inputs = {(d.dataset.name, d.tags[0].value) for d in run.inputs.dataset_inputs}
        assert inputs == {('imagenet-train', 'training'), ('imagenet-val', 'validation')}
        assert json.loads(run.inputs.dataset_inputs[0].dataset.source)['uri'] == betons.source
        assert len(run.outputs.model_outputs) == 1
    assert any(k.startswith('system/cpu') for k in runs['nano'].data.metrics)
    assert not any(k.startswith('system/') for k in runs['nano_dp'].data.metrics)

    mlflow.set_tracking_uri(server.uri)  # models:/ URIs resolve through it
    models = mlflow.search_logged_models(experiment_ids=[runs['nano'].info.experiment_id], output_format='list')
    assert sorted(m.name for m in models) == ['nano', 'nano_dp']
    assert {m.source_run_id for m in models} == set(run_ids.values())
    x = torch.randn(2, 3, 64, 64)
    expected = export_logits(export, x)
    for model in models:
        info = mlflow.models.get_model_info(model.model_uri)
        assert info.signature.inputs.to_dict() == [{'type': 'tensor', 'tensor-spec': {'dtype': 'float32',
                                                                                       'shape': (-1, 3, 64, 64)}}]
        assert info.saved_input_example_info is not None and info.flavors['pytorch']
        assert ('val/ema_top1', 1) in {(m.key, m.step) for m in model.metrics}  # the last epoch's, linked
        with torch.no_grad():
            torch.testing.assert_close(mlflow.pytorch.load_model(model.model_uri)(x), expected)
        predicted = mlflow.pyfunc.load_model(model.model_uri).predict(x.numpy())
        torch.testing.assert_close(torch.as_tensor(predicted), expected)
    versions = client.search_model_versions("name = 'nano_dp'")
    assert [(v.version, v.run_id) for v in versions] == [('1', run_ids['nano_dp'])]  # register_model: true
    assert client.search_model_versions("name = 'nano'") == []


@pytest.mark.timeout(300)
def test_server_killed_mid_run_then_replay_is_idempotent(own_server, export, tmp_path, capfd):
    own_server.start()
    tracking = Tracking(tracking_uri=own_server.uri, experiment='outage', system_metrics=False,
                        offline_dir=str(tmp_path / 'offline'))
    tracker = Tracker(tracking, run_name='nano')
    log_fake_training(tracker, range(1, 4), range(0))
    client = mlflow.MlflowClient(own_server.uri)
    deadline = time.monotonic() + 30
    while len(client.get_metric_history(tracker.run_id, 'train/loss')) < 3:  # sent in the background
        assert time.monotonic() < deadline
        time.sleep(0.1)
    own_server.stop(signal.SIGKILL)

    started = time.monotonic()
    log_fake_training(tracker, range(4, 7), range(2))
    tracker.log_artifact(export / 'card.json', 'model')
    tracker.log_model(export, step=1)
    tracker.end()
    assert time.monotonic() - started < 15 and tracker.offline
    (warning,) = warnings_in(capfd.readouterr().err)
    assert 'unreachable' in warning and 'Connection refused' in warning
    (session,) = (tmp_path / 'offline').iterdir()
    state = json.loads((session / 'state.json').read_text())
    assert state['run_id'] == tracker.run_id and state['pushed'] >= 3
    copy = tmp_path / 'copy'
    shutil.copytree(session, copy)

    own_server.start()  # same store, same port
    assert replay(tmp_path / 'offline') == ([(session.name, tracker.run_id)], [])
    assert not (tmp_path / 'offline').exists()
    shutil.copytree(copy, session)  # the same queue once more: nothing is logged twice
    os.remove(session / 'state.json')
    assert replay(tmp_path / 'offline') == ([(session.name, tracker.run_id)], [])

    run = client.get_run(tracker.run_id)
    assert run.info.status == 'FINISHED'
    assert [m.step for m in client.get_metric_history(tracker.run_id, 'train/loss')] == [1, 2, 3, 4, 5, 6]
    assert [m.step for m in client.get_metric_history(tracker.run_id, 'val/top1')] == [0, 1]
    assert [x.path for x in client.list_artifacts(tracker.run_id, 'model')] == ['model/card.json']
    models = client.search_logged_models([run.info.experiment_id])
    assert len(models) == 1 and models[0].source_run_id == tracker.run_id


@pytest.mark.timeout(300)
def test_unreachable_from_start_then_the_next_stage_replays(own_server, export, betons, tmp_path, capfd):
    tracking = Tracking(tracking_uri=own_server.uri, experiment='no-server', system_metrics=False,
                        offline_dir=str(tmp_path / 'offline'))
    started = time.monotonic()
    train = Tracker(tracking, run_name='nano')  # nothing listens on the port
    log_fake_training(train, range(1, 5), range(2))
    train.log_model(export, step=1)
    train.end()
    assert time.monotonic() - started < 20
    assert train.run_id.startswith(OFFLINE_PREFIX) and train.offline
    assert len(warnings_in(capfd.readouterr().err)) == 1
    (session,) = (tmp_path / 'offline').iterdir()
    header, *ops = [json.loads(line) for line in (session / 'queue.jsonl').read_text().splitlines()]
    assert header['run_name'] == 'nano' and header['tracking_uri'] == own_server.uri
    assert [op['step'] for op in ops if 'train/loss' in op.get('metrics', {})] == [1, 2, 3, 4]
    assert ops[-1]['op'] == 'end'

    own_server.start()
    evaluate = Tracker(tracking, run_name='nano', run_id=train.run_id)  # as the evaluate stage, from card.json
    evaluate.log_metrics({'eval/top1': 0.5}, step=0, model='nano', dataset=beton_dataset(betons, 'val'))
    evaluate.end()
    assert not (tmp_path / 'offline').exists()
    client = mlflow.MlflowClient(own_server.uri)
    (run,) = client.search_runs([client.get_experiment_by_name('no-server').experiment_id])
    assert run.info.run_id == evaluate.run_id and run.info.status == 'FINISHED'
    assert run.data.tags[SESSION_TAG] == session.name and run.info.run_name == 'nano'
    assert run.info.start_time == header['created']
    assert [m.step for m in client.get_metric_history(run.info.run_id, 'train/loss')] == [1, 2, 3, 4]
    assert run.data.metrics['eval/top1'] == 0.5
    (model,) = client.search_logged_models([run.info.experiment_id])  # logged by the replay, before the eval metrics
    linked = {m.key: m for m in model.metrics}
    assert linked['val/ema_top1'].step == 1 and linked['eval/top1'].value == 0.5
    val = beton_dataset(betons, 'val')
    assert (linked['eval/top1'].dataset_name, linked['eval/top1'].dataset_digest) == (val['name'], val['digest'])
    assert warnings_in(capfd.readouterr().err) == []


# --- the real train stage ----------------------------------------------------------------------


def stage_params(tmp_path: Path, uri: str, register: bool = False) -> Path:
    """test_train's params on one rank, a 3 x 8 image sample and batches of 4 (6 steps an epoch)."""
    write_sample(tmp_path / 'src', Sample(num_classes=3, train_per_class=8, val_per_class=4))
    params = tmp_path / 'params.yaml'
    text = stage.PARAMS.format(src=tmp_path / 'src', betons=tmp_path / 'betons', uri=uri)
    text = text.replace('world_size: 2', 'world_size: 1').replace('batch_size: 8', 'batch_size: 4')
    text = text.replace('log_every_steps: 1}', f"log_every_steps: 1, offline_dir: '{tmp_path / 'offline'}', "
                        f'register_model: {str(register).lower()}, timeout_s: 5}}')
    params.write_text(text)
    stage.convert(['--params', str(params), '--report', str(tmp_path / 'bad.json')])
    return params


STEPS = 2 * (3 * 8 // 4)  # 2 epochs of 24 readable images in batches of 4, one train/loss point each


def assert_complete_run(client, run_id: str, out: Path) -> None:
    """The run holds what an uninterrupted stage logs: every step, every epoch, the export's files,
    the datasets and the model with the export's logits."""
    run = client.get_run(run_id)
    assert run.info.status == 'FINISHED' and run.data.params['train.batch_size'] == '4'
    assert [m.step for m in client.get_metric_history(run_id, 'train/loss')] == list(range(1, STEPS + 1))
    assert [m.step for m in client.get_metric_history(run_id, 'val/ema_top1')] == [0, 1]
    assert {x.path for x in client.list_artifacts(run_id, 'model')} == \
        {'model/card.json', 'model/config.json', 'model/model.safetensors', 'model/raw.safetensors'}
    assert [x.path for x in client.list_artifacts(run_id, 'plots')] == ['plots/nano.tsv']
    assert sorted(d.tags[0].value for d in run.inputs.dataset_inputs) == ['training', 'validation']
    mlflow.set_tracking_uri(client.tracking_uri)  # models:/ URIs resolve through it
    (model,) = [m for m in mlflow.search_logged_models(experiment_ids=[run.info.experiment_id], output_format='list')
                if m.source_run_id == run_id]
    assert model.name == 'nano'
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(mlflow.pytorch.load_model(model.model_uri)(x),
                                   export_logits(out / 'models' / 'nano', x))


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_train_stage_survives_a_server_killed_mid_run(own_server, tmp_path):
    own_server.start()
    params = stage_params(tmp_path, own_server.uri)
    env = dict(stage.train_env(), DVC_EXP_NAME='tiny-exp')
    client = mlflow.MlflowClient(own_server.uri)
    stderr = train_through_an_outage(tmp_path, params, env, lambda: own_server.stop(signal.SIGKILL))
    (warning,) = warnings_in(stderr)
    assert 'unreachable' in warning and 'queue.jsonl' in warning and 'Traceback' not in stderr
    assert (tmp_path / 'plots' / 'train' / 'nano.tsv').is_file()
    assert (tmp_path / 'models' / 'nano' / 'card.json').is_file()
    (session,) = (tmp_path / 'offline').iterdir()
    assert (session / 'queue.jsonl').is_file()
    run_id = json.loads((tmp_path / 'models' / 'nano' / 'card.json').read_text())['mlflow_run_id']

    own_server.start()  # same store, same port
    assert len(client.get_metric_history(run_id, 'train/loss')) < STEPS  # the outage cost these
    replayed = replay_command(params)
    assert f'into run {run_id}' in replayed.stdout and not (tmp_path / 'offline').exists()
    assert_complete_run(client, run_id, tmp_path)
    assert client.get_run(run_id).data.tags['dvc.exp_name'] == 'tiny-exp'


def train_through_an_outage(tmp_path: Path, params: Path, env: dict[str, str], cut) -> str:
    """Run the train stage and call `cut()` (the outage) once its first step is in the queue (and
    being sent): 11 steps, 2 evaluations, the export and the model to go. The stage must still
    exit 0 within 180 s; returns its stderr."""
    started = time.monotonic()
    launch = subprocess.Popen(stage.train_command(tmp_path, params), cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE, text=True)
    try:
        while not _queued_a_step(tmp_path / 'offline'):
            assert launch.poll() is None, launch.communicate()[1][-3000:]
            assert time.monotonic() - started < 300
            time.sleep(0.01)
        cut()
        _, stderr = launch.communicate(timeout=180)
    finally:
        if launch.poll() is None:
            launch.kill()
    assert launch.returncode == 0, stderr[-3000:]
    assert time.monotonic() - started < 180
    return stderr


def replay_command(params: Path) -> subprocess.CompletedProcess:
    """`python -m pipeline.tools.replay_tracking --params <params>`, which must succeed."""
    replayed = subprocess.run([sys.executable, '-m', 'pipeline.tools.replay_tracking', '--params', str(params)], cwd=ROOT,
                              env=stage.train_env(), capture_output=True, text=True, timeout=300)
    assert replayed.returncode == 0, replayed.stderr[-3000:]
    return replayed


def _queued_a_step(offline: Path) -> bool:
    """Whether the stage has logged its first step: seen in its queue at once, on the server a
    little later (the steps after the first, which compiles FFCV's pipeline, take milliseconds)."""
    return any('"train/loss"' in queue.read_text() for queue in offline.glob('*/queue.jsonl'))


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_train_stage_without_server_then_a_rerun_replays(own_server, tmp_path):
    params = stage_params(tmp_path, own_server.uri, register=True)
    started = time.monotonic()
    proc = stage.train(tmp_path, params)  # nothing listens on the port
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert time.monotonic() - started < 180
    assert len(warnings_in(proc.stderr)) == 1 and 'Traceback' not in proc.stderr
    card = json.loads((tmp_path / 'models' / 'nano' / 'card.json').read_text())
    assert card['mlflow_run_id'].startswith(OFFLINE_PREFIX)
    (session,) = (tmp_path / 'offline').iterdir()
    assert card['mlflow_run_id'] == OFFLINE_PREFIX + session.name

    own_server.start()
    again = stage.train(tmp_path, params)  # the checkpoint is complete: nothing is retrained, the queue replayed
    assert again.returncode == 0, again.stderr[-3000:]
    assert warnings_in(again.stderr) == [] and not (tmp_path / 'offline').exists()
    client = mlflow.MlflowClient(own_server.uri)
    (run,) = client.search_runs([client.get_experiment_by_name('stage-test').experiment_id])
    assert run.data.tags[SESSION_TAG] == session.name
    assert json.loads((tmp_path / 'models' / 'nano' / 'card.json').read_text())['mlflow_run_id'] == run.info.run_id
    assert_complete_run(client, run.info.run_id, tmp_path)
    (version,) = client.search_model_versions("name = 'nano'")
    assert version.run_id == run.info.run_id


# --- a team's server: PostgreSQL, artifacts proxied by the server ----------------------------------

PG_BIN = max(Path('/usr/lib/postgresql').glob('*/bin/initdb'), default=None)  # Debian's `postgresql` package


class Postgres:
    """A PostgreSQL cluster of its own on 127.0.0.1 (Debian's `postgresql`), trust authentication,
    one database `mlflow`; restartable on the same data and port. As root its commands run as the
    `postgres` user (initdb refuses root), in a folder that user may enter (pytest's are root's)."""

    def __init__(self):
        self.bin, self.port = PG_BIN.parent, free_port()
        self.folder = Path(tempfile.mkdtemp(prefix='sgformer-pg-'))
        self.as_owner = ['runuser', '-u', 'postgres', '--'] if os.geteuid() == 0 else []
        if self.as_owner:
            shutil.chown(self.folder, 'postgres')
        self.uri = f'postgresql+psycopg://postgres@127.0.0.1:{self.port}/mlflow'  # psycopg: the `server` extra
        self.running = False

    def create(self) -> 'Postgres':
        self._run('initdb', '-D', self.folder / 'data', '-U', 'postgres', '--auth=trust', '-E', 'UTF8')
        self.start()
        self._run('createdb', '-h', '127.0.0.1', '-p', self.port, '-U', 'postgres', 'mlflow')
        return self

    def _run(self, command: str, *args) -> None:
        subprocess.run([*self.as_owner, str(self.bin / command), *map(str, args)], check=True, capture_output=True,
                       timeout=120)

    def start(self) -> None:
        if not self.running:
            self._run('pg_ctl', '-D', self.folder / 'data', '-l', self.folder / 'log', '-w', 'start',
                      '-o', f'-h 127.0.0.1 -p {self.port} -k {self.folder}')
            self.running = True

    def stop(self) -> None:
        self._run('pg_ctl', '-D', self.folder / 'data', '-m', 'fast', '-w', 'stop')
        self.running = False

    def query(self, sql: str, *args) -> list[tuple]:
        import psycopg
        with psycopg.connect(f'host=127.0.0.1 port={self.port} user=postgres dbname=mlflow') as db:
            return db.execute(sql, args).fetchall()

    def remove(self) -> None:
        subprocess.run([*self.as_owner, str(self.bin / 'pg_ctl'), '-D', str(self.folder / 'data'), '-m', 'immediate',
                        'stop'], capture_output=True)
        shutil.rmtree(self.folder, ignore_errors=True)


@pytest.fixture(scope='module')
def team(tmp_path_factory):
    """PostgreSQL, and `mlflow server` over it serving the artifacts from a folder of its own, as
    the README's team setup runs them (one start-up of each for the module)."""
    if PG_BIN is None:
        if os.environ.get('CI'):
            pytest.fail('PostgreSQL is missing; `make test` installs it (TEST_APT_PACKAGES)')
        pytest.skip('PostgreSQL is not installed (apt-get install postgresql, or `make test`)')
    database, folder = Postgres(), tmp_path_factory.mktemp('team')
    server = Server(folder, backend_store_uri=database.uri, artifacts_destination=folder / 'artifacts')
    try:
        database.create()
        server.start()
        yield database, server
    finally:
        server.stop()
        database.remove()


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_train_stage_on_a_postgresql_server_with_proxied_artifacts(team, tmp_path):
    database, server = team
    params = stage_params(tmp_path, server.uri)
    proc = stage.train(tmp_path, params)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert warnings_in(proc.stderr) == [] and not (tmp_path / 'offline').exists()
    run_id = json.loads((tmp_path / 'models' / 'nano' / 'card.json').read_text())['mlflow_run_id']
    # in PostgreSQL itself: the run, its params, its metrics
    assert database.query('SELECT name, status FROM runs WHERE run_uuid = %s', run_id) == [('nano', 'FINISHED')]
    params_in_db = dict(database.query('SELECT key, value FROM params WHERE run_uuid = %s', run_id))
    assert params_in_db['train.batch_size'] == '4' and params_in_db['model'] == 'sgformer_nano'
    steps = database.query("SELECT step FROM metrics WHERE run_uuid = %s AND key = 'train/loss' ORDER BY step", run_id)
    assert [step for (step,) in steps] == list(range(1, STEPS + 1))
    # the files went through the server into its artifacts destination: the export and the logged model
    client = mlflow.MlflowClient(server.uri)
    run = client.get_run(run_id)
    assert run.info.artifact_uri.startswith('mlflow-artifacts:/')
    stored = server.artifacts_destination / run.info.artifact_uri.removeprefix('mlflow-artifacts:/')
    exported = tmp_path / 'models' / 'nano' / 'model.safetensors'
    assert (stored / 'model' / 'model.safetensors').read_bytes() == exported.read_bytes()
    mlflow.set_tracking_uri(server.uri)
    (model,) = mlflow.search_logged_models(experiment_ids=[run.info.experiment_id], output_format='list',
                                           filter_string=f"source_run_id = '{run_id}'")
    assert (server.artifacts_destination / model.artifact_location.removeprefix('mlflow-artifacts:/') / 'MLmodel'
            ).is_file()
    assert_complete_run(client, run_id, tmp_path)  # read back through the server, the model loads


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_train_stage_survives_the_database_stopped_mid_run(team, tmp_path):
    database, server = team
    params = stage_params(tmp_path, server.uri)
    try:
        stderr = train_through_an_outage(tmp_path, params, stage.train_env(), database.stop)  # the server answers 503
    finally:
        database.start()
    (warning,) = warnings_in(stderr)
    assert 'unreachable (too many 503 error responses)' in warning and 'Traceback' not in stderr
    assert (tmp_path / 'plots' / 'train' / 'nano.tsv').is_file()
    (session,) = (tmp_path / 'offline').iterdir()
    run_id = json.loads((tmp_path / 'models' / 'nano' / 'card.json').read_text())['mlflow_run_id']

    replayed = replay_command(params)
    assert f'replayed {session.name} into run {run_id}' in replayed.stdout and not (tmp_path / 'offline').exists()
    assert_complete_run(mlflow.MlflowClient(server.uri), run_id, tmp_path)


def test_a_warning_printed_while_a_progress_bar_is_drawn_keeps_its_own_line(capsys):
    with tqdm(total=4, mininterval=0) as bar:  # the trainer's epoch bar, on stderr
        bar.update(1)
        print_warning('MLflow at http://127.0.0.1:1 is unreachable')
        bar.update(1)
    assert warnings_in(capsys.readouterr().err) == ['warning: MLflow at http://127.0.0.1:1 is unreachable']
