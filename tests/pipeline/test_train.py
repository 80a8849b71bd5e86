"""The `train` stage end to end: relaunch under a real 2-rank gloo torchrun, FFCV betons from the
sample, exports that reload in timm, the table of epochs, one MLflow run that a rerun continues."""
import csv
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import mlflow
import pytest
import timm
import torch

import sgformer.models  # noqa: F401  (registers the sgformer_* models with timm)
from conftest import Launch
from pipeline.convert import main as convert
from sgformer.config import Sample
from sgformer.datasets.sample import write_sample
from sgformer.train.trainer import MEASURED_KEYS

ROOT = Path(__file__).resolve().parents[2]
PARAMS = """
data: {{source: {src}, betons: {betons}}}
convert: {{max_resolution: 80, write_mode: jpg, max_bad_fraction: 0.3}}
loader: {{num_workers: 1}}
train: {{epochs: 2, batch_size: 8, world_size: 2, img_size: 64, num_classes: 3, warmup_epochs: 1, drop_path_rate: 0.1}}
tracking: {{tracking_uri: '{uri}', experiment: stage-test, system_metrics: false, log_every_steps: 1}}
variants:
  nano: {{model: sgformer_nano}}
"""


def train_command(out: Path, params: Path) -> list[str]:
    return [sys.executable, '-m', 'pipeline.train', '--params', str(params), '--variant', 'nano',
            '--report', str(params.parent / 'bad.json'), '--models', str(out / 'models'), '--checkpoints', str(out / 'ckpt'),
            '--plots', str(out / 'plots')]


def train_env() -> dict[str, str]:
    return dict(os.environ, PYTHONWARNINGS='ignore', MLFLOW_DISABLE_TELEMETRY='true')


def train(out: Path, params: Path) -> subprocess.CompletedProcess:
    return subprocess.run(train_command(out, params), cwd=ROOT, env=train_env(), capture_output=True, text=True,
                          timeout=500)


def check_outputs_of_an_uninterrupted_run(out: Path, uri: str, epochs: int) -> str:
    """The export reloads in timm (EMA and raw weights apart), its card holds the last epoch's
    metrics and the table every epoch, the MLflow run holds the resolved params, per-step and per-epoch metrics and the model;
    returns the run id."""
    model_dir = out / 'models' / 'nano'
    card = json.loads((model_dir / 'card.json').read_text())
    assert card['model'] == 'sgformer_nano' and len(card['class_index']) == 3
    assert sorted(p.name for p in model_dir.iterdir()) == ['card.json', 'config.json', 'model.safetensors',
                                                            'raw.safetensors']
    assert {'train_loss', 'val_top1', 'val_ema_top1', 'val_top5'} <= set(card['metrics'])
    rows = list(csv.DictReader((out / 'plots' / 'train' / 'nano.tsv').open(), delimiter='\t'))
    assert [r['epoch'] for r in rows] == [str(e) for e in range(epochs)]
    assert rows[-1] == {k: str(v) for k, v in dict(epoch=epochs - 1, **card['metrics']).items()}

    ema = timm.create_model(f'local-dir:{model_dir}', pretrained=True).eval()
    raw = timm.create_model('sgformer_nano', pretrained=True, **card['model_kwargs'], pretrained_cfg_overlay=dict(
        file=str(model_dir / 'raw.safetensors'), num_classes=3)).eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert not torch.equal(ema(x), raw(x))  # the EMA is its own set of weights

    client = mlflow.MlflowClient(tracking_uri=uri)
    experiment = client.get_experiment_by_name('stage-test')
    (run,) = client.search_runs([experiment.experiment_id])
    assert run.info.run_name == 'nano' and run.info.status == 'FINISHED'
    assert card['mlflow_run_id'] == run.info.run_id  # the evaluate stage logs into this run
    assert run.data.params['train.epochs'] == str(epochs) and run.data.params['model'] == 'sgformer_nano'
    assert run.data.params['variant'] == 'nano' and not any(k.startswith('variants.') for k in run.data.params)
    assert run.data.tags['world_size'] == '2' and len(run.data.tags['mlflow.source.git.commit']) == 40
    steps_per_epoch = 36 // 8  # 36 readable train images (3 x 12), global batch 8, drop_last
    # read back every tracking.log_every_steps (1 here) and at each epoch's end, without waiting on the device
    assert [m.step for m in client.get_metric_history(run.info.run_id, 'train/loss')] == \
        list(range(1, epochs * steps_per_epoch + 1))
    assert [m.step for m in client.get_metric_history(run.info.run_id, 'val/ema_top1')] == list(range(epochs))
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id, 'model')}
    assert artifacts == {'model/card.json', 'model/config.json', 'model/model.safetensors', 'model/raw.safetensors'}
    return run.info.run_id


def first(paths) -> Path | None:
    return next(iter(paths), None)


CROP_FREE = 'augment: {scale: [1.0, 1.0], ratio: [1.0, 1.0], hflip: 0.0}\n'


@dataclass(frozen=True)
class Reference:
    """An uninterrupted 3-epoch 2-rank run: its params file, MLflow URI and output folder."""

    params: Path
    uri: str
    out: Path

    def params_for(self, tmp_path: Path, experiment: str, **runtime) -> Path:
        """The same settings (and betons) for another MLflow experiment of the same store, with
        the tracking queue in `tmp_path` and `runtime` keys set; returns the new params file."""
        text = self.params.read_text().replace('experiment: stage-test', f'experiment: {experiment}').replace(
            'log_every_steps: 1}', f'log_every_steps: 1, offline_dir: {tmp_path / "offline"}}}')
        if runtime:
            text += 'runtime: {' + ', '.join(f'{k}: {v}' for k, v in runtime.items()) + '}\n'
        params = tmp_path / 'params.yaml'
        params.write_text(text)
        return params


@pytest.fixture(scope='module')
def reference(tmp_path_factory) -> Reference:
    """The run the interrupted ones must match. FFCV draws its crops and flips from unseeded
    per-thread generators, so it turns them off (the seeded batch augmentation, mixup and
    drop-path stay on)."""
    tmp_path = tmp_path_factory.mktemp('reference')
    write_sample(tmp_path / 'src', Sample(num_classes=3, train_per_class=12, val_per_class=4))
    uri = f'sqlite:///{tmp_path}/mlflow.db'
    params = tmp_path / 'params.yaml'
    params.write_text(PARAMS.format(src=tmp_path / 'src', betons=tmp_path / 'betons', uri=uri).replace(
        'epochs: 2', 'epochs: 3') + CROP_FREE)
    convert(['--params', str(params), '--report', str(tmp_path / 'bad.json')])
    out = tmp_path / 'reference'
    out.mkdir()
    proc = train(out, params)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return Reference(params, uri, out)


def assert_ends_as(out: Path, reference: Path) -> None:
    """`out`'s run ended with `reference`'s metrics (but the wall-clock ones) and weights."""
    expected = json.loads((reference / 'models' / 'nano' / 'card.json').read_text())['metrics']
    got = json.loads((out / 'models' / 'nano' / 'card.json').read_text())['metrics']
    for key in MEASURED_KEYS:  # wall-clock measurements
        expected.pop(key, None), got.pop(key, None)
    assert got == expected
    for name in ('model.safetensors', 'raw.safetensors'):
        assert (out / 'models' / 'nano' / name).read_bytes() == (reference / 'models' / 'nano' / name).read_bytes()


def logged_step(offline: Path, step: int) -> Path | None:
    """The tracking queue (under `offline`) holding train/loss at `step`, once rank 0 logged it."""
    for queue in offline.glob('*/queue.jsonl'):
        if any('"train/loss"' in line and f'"step": {step},' in line for line in queue.read_text().splitlines()):
            return queue
    return None


@pytest.mark.slow
@pytest.mark.timeout(1200)
def test_two_ranks_then_kill_9_during_a_checkpoint_save_and_the_export_then_rerun_matches_uninterrupted(
        reference, tmp_path, kill_when):
    """An uninterrupted 2-rank run writes every output, and its rerun trains nothing and continues
    its MLflow run. Then kill -9 of the whole torchrun process group while both ranks write a
    checkpoint, a rerun killed while it writes the export, then a rerun to the end: it ends with
    exactly the uninterrupted run's numbers and weights."""
    params, uri = reference.params, reference.uri
    run_id = check_outputs_of_an_uninterrupted_run(reference.out, uri, epochs=3)
    weights = (reference.out / 'models' / 'nano' / 'model.safetensors').read_bytes()
    again = train(reference.out, params)  # the last checkpoint is complete: nothing is retrained
    assert again.returncode == 0, again.stderr[-4000:]
    client = mlflow.MlflowClient(tracking_uri=uri)
    assert check_outputs_of_an_uninterrupted_run(reference.out, uri, epochs=3) == run_id
    assert (reference.out / 'models' / 'nano' / 'model.safetensors').read_bytes() == weights

    out = tmp_path / 'interrupted'
    out.mkdir()
    saving = kill_when(train_command(out, params), lambda: first((out / 'ckpt' / 'nano').glob('*/step-8.tmp')),
                       cwd=ROOT, env=train_env())
    run = saving.parent
    assert sorted(p.name for p in run.iterdir() if p.name.startswith('step-')) == ['step-4', 'step-8.tmp']
    exporting = kill_when(train_command(out, params), lambda: first((out / 'models').glob('.nano.tmp')),
                          cwd=ROOT, env=train_env())
    assert not (out / 'models' / 'nano').exists() and not (out / 'plots' / 'train' / 'nano.tsv').exists()
    assert exporting.name == '.nano.tmp'

    proc = train(out, params)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert_ends_as(out, reference.out)
    assert not list((out / 'models').glob('.nano.*')) and not list(run.glob('*.tmp'))
    runs = client.search_runs([client.get_experiment_by_name('stage-test').experiment_id])
    assert len(runs) == 2  # the reference run and the interrupted-then-resumed one
    assert all(r.info.status == 'FINISHED' for r in runs)


@pytest.mark.slow
@pytest.mark.timeout(1200)
def test_a_rank_killed_mid_epoch_is_restarted_by_torchrun_and_the_run_ends_as_uninterrupted(reference, tmp_path):
    """kill -9 of one rank (not of torchrun) in the middle of epoch 2 of 3: torchrun's elastic agent
    (runtime.max_restarts) restarts both ranks, they resume from the newest checkpoint, and the
    stage exits 0 with the uninterrupted run's numbers and weights, in one FINISHED MLflow run."""
    params = reference.params_for(tmp_path, 'stage-elastic', max_restarts=1)
    out = tmp_path / 'out'
    launch = Launch(train_command(out, params), cwd=ROOT, env=train_env(), log=tmp_path / 'stderr.txt')
    launch.wait_for(lambda: logged_step(tmp_path / 'offline', 5))  # epoch 1 is steps 5 to 8
    launch.rank(1).kill()
    code, stderr = launch.finish()
    assert code == 0, stderr[-4000:]
    assert 'at step 4 (epoch 1 of 3)' in stderr and 'Traceback' not in stderr, stderr[-4000:]
    assert_ends_as(out, reference.out)
    client = mlflow.MlflowClient(tracking_uri=reference.uri)
    (run,) = client.search_runs([client.get_experiment_by_name('stage-elastic').experiment_id])
    assert run.info.status == 'FINISHED'
    assert json.loads((out / 'models' / 'nano' / 'card.json').read_text())['mlflow_run_id'] == run.info.run_id
    assert [m.step for m in client.get_metric_history(run.info.run_id, 'val/ema_top1')] == [0, 1, 2]


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_a_hung_rank_ends_the_others_in_one_line_after_the_collective_timeout(reference, tmp_path):
    """SIGSTOP of one rank mid-epoch with no restarts: the other rank's next collective gives up
    after runtime.collective_timeout_s, and it ends with one line naming the timeout, no traceback;
    the stage exits non-zero."""
    timeout_s = 20
    params = reference.params_for(tmp_path, 'stage-hung', max_restarts=0, collective_timeout_s=timeout_s)
    out = tmp_path / 'out'
    launch = Launch(train_command(out, params), cwd=ROOT, env=train_env(), log=tmp_path / 'stderr.txt')
    launch.wait_for(lambda: logged_step(tmp_path / 'offline', 2))
    survivor, hung = launch.rank(0), launch.rank(1)
    hung.suspend()
    stopped = time.monotonic()
    survivor.wait(timeout_s + 60)
    waited = time.monotonic() - stopped
    assert waited < timeout_s + 40
    # torchrun now stops the hung rank: SIGTERM (pending while it is stopped), SIGKILL 30 s later;
    # let it take the SIGTERM at once
    launch.wait_for(lambda: sigterm_pending(hung.pid) or None, timeout=60)
    hung.resume()
    code, stderr = launch.finish(120)
    assert code == 1, stderr[-4000:]
    line = f'error: rank 0: the other ranks did not answer within runtime.collective_timeout_s = {timeout_s} s'
    assert [piece for piece in re.split(r'[\r\n]', stderr) if piece.startswith('error:')] == [
        f'{line} (a rank is hung or dead); stopping'], stderr[-4000:]
    assert 'Traceback' not in stderr, stderr[-4000:]


def sigterm_pending(pid: int) -> bool:
    """Whether SIGTERM waits to be delivered to process `pid` (it is stopped)."""
    status = Path(f'/proc/{pid}/status').read_text()
    pending = int(re.search(r'^ShdPnd:\s*([0-9a-f]+)', status, re.M)[1], 16) | \
        int(re.search(r'^SigPnd:\s*([0-9a-f]+)', status, re.M)[1], 16)
    return bool(pending & 1 << (signal.SIGTERM - 1))


def test_unknown_variant_exits_with_message(tmp_path):
    params = tmp_path / 'params.yaml'
    params.write_text('variants:\n  nano: {model: sgformer_nano}\n')
    proc = subprocess.run([sys.executable, '-m', 'pipeline.train', '--params', str(params), '--variant', 'big'],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0
    assert 'variants.big: no such variant' in proc.stderr and 'Traceback' not in proc.stderr


@pytest.mark.slow
@pytest.mark.timeout(1200)
def test_other_settings_never_delete_an_interrupted_run(tmp_path, kill_when):
    """Train A, interrupt it, train B (other lr) to the end, rerun A: A resumes from its checkpoint."""
    write_sample(tmp_path / 'src', Sample(num_classes=3, train_per_class=12, val_per_class=4))
    uri = f'sqlite:///{tmp_path}/mlflow.db'
    params = tmp_path / 'params.yaml'
    settings_a = PARAMS.format(src=tmp_path / 'src', betons=tmp_path / 'betons', uri=uri).replace(
        'epochs: 2', 'epochs: 3').replace('world_size: 2', 'world_size: 1')  # checkpoint retention: one rank will do
    params.write_text(settings_a)
    convert(['--params', str(params), '--report', str(tmp_path / 'bad.json')])
    kill_when(train_command(tmp_path, params), lambda: first((tmp_path / 'ckpt' / 'nano').glob('*/step-4')),
              cwd=ROOT, env=train_env())
    (run_a,) = [p.name for p in (tmp_path / 'ckpt' / 'nano').iterdir()]

    params.write_text(settings_a.replace('epochs: 3', 'epochs: 1, lr: 0.004'))
    b = train(tmp_path, params)
    assert b.returncode == 0, b.stderr[-3000:]
    assert run_a in {p.name for p in (tmp_path / 'ckpt' / 'nano').iterdir()} and len(list((tmp_path / 'ckpt' / 'nano').iterdir())) == 2

    params.write_text(settings_a)
    a = train(tmp_path, params)
    assert a.returncode == 0, a.stderr[-3000:]
    assert f'resuming {tmp_path / "ckpt" / "nano" / run_a} at step 4 (epoch 1 of 3)' in a.stderr


@pytest.mark.slow
@pytest.mark.timeout(1200)
def test_progressive_resize_then_fine_tune_the_export_on_other_classes(tmp_path):
    """A run that ramps 32 -> 64 px records the side and the cost of each epoch; its export then
    starts a run on 2 other classes (num_classes from the betons, a fresh classifier); a bad
    init_from or a class count that disagrees stops the stage in one line before training."""
    write_sample(tmp_path / 'src', Sample(num_classes=3, train_per_class=12, val_per_class=4, bad_files=False))
    uri = f'sqlite:///{tmp_path}/mlflow.db'
    params = tmp_path / 'params.yaml'
    base = PARAMS.format(src=tmp_path / 'src', betons=tmp_path / 'betons', uri=uri).replace(
        'world_size: 2', 'world_size: 1').replace('num_classes: 3', 'num_classes: null')
    params.write_text(base.replace('drop_path_rate: 0.1}', 'drop_path_rate: 0.1, '
                                   'progressive_resize: {min_size: 32, start_ramp: 0, end_ramp: 1}}'))
    convert(['--params', str(params), '--report', str(tmp_path / 'bad.json')])
    proc = train(tmp_path / 'first', params)
    assert proc.returncode == 0, proc.stderr[-4000:]
    rows = list(csv.DictReader((tmp_path / 'first' / 'plots' / 'train' / 'nano.tsv').open(), delimiter='\t'))
    assert [int(r['img_size']) for r in rows] == [32, 64]
    hours = [float(r['gpu_hours']) for r in rows]
    assert 0 < hours[0] < hours[1] < 0.1 and all(0 <= float(r['data_wait']) <= 1 for r in rows)
    assert all(float(r['peak_mem_gib']) > 0.1 for r in rows) and 'mfu' not in rows[0]  # no peak FLOP/s on a CPU
    metrics = json.loads((tmp_path / 'first' / 'models' / 'nano' / 'card.json').read_text())['metrics']
    assert metrics['img_size'] == 64 and metrics['gpu_hours'] == hours[1]
    client = mlflow.MlflowClient(tracking_uri=uri)
    (run,) = client.search_runs([client.get_experiment_by_name('stage-test').experiment_id])
    assert [m.value for m in client.get_metric_history(run.info.run_id, 'train/img_size')] == [32, 64]
    assert {'train/gpu_hours', 'train/data_wait', 'train/peak_mem_gib'} <= set(run.data.metrics)

    two = tmp_path / 'two'
    for split in ('train', 'val'):
        for synset in sorted(p.name for p in (tmp_path / 'src' / split).iterdir())[:2]:
            shutil.copytree(tmp_path / 'src' / split / synset, two / split / synset)
    export = tmp_path / 'first' / 'models' / 'nano'
    tuned = base.replace(str(tmp_path / 'src'), str(two)).replace(str(tmp_path / 'betons'), str(tmp_path / 'betons2'))
    params.write_text(tuned.replace('epochs: 2', f'epochs: 1, init_from: {export}'))
    convert(['--params', str(params), '--report', str(tmp_path / 'bad2.json')])
    proc = train(tmp_path / 'tuned', params)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert f'init_from {export}: loaded' in proc.stderr
    assert 'classifier re-initialised for 2 classes (the weights have 3)' in proc.stderr
    card = json.loads((tmp_path / 'tuned' / 'models' / 'nano' / 'card.json').read_text())
    assert card['model_kwargs']['num_classes'] == 2 and len(card['class_index']) == 2

    for settings, message in ((f'epochs: 1, init_from: {tmp_path / "nowhere"}', f'{tmp_path / "nowhere"}: not found'),
                              ('epochs: 1, num_classes: 3', 'num_classes is 3 but')):
        params.write_text(tuned.replace('epochs: 2', settings).replace('num_classes: null, ', ''))
        proc = train(tmp_path / 'refused', params)
        assert proc.returncode == 1 and message in proc.stderr and 'Traceback' not in proc.stderr, proc.stderr[-2000:]
        assert not (tmp_path / 'refused' / 'ckpt').exists() or not any((tmp_path / 'refused' / 'ckpt').rglob('step-*'))
