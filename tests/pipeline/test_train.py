"""The `train` stage end to end: relaunch under a real 2-rank gloo torchrun, FFCV betons from the
sample, exports that reload in timm, DVC metrics/plots, one MLflow run that a rerun continues."""
import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import mlflow
import pytest
import timm
import torch

import sgformer  # noqa: F401
from pipeline.convert import main as convert
from sgformer.data.sample import write_sample

ROOT = Path(__file__).resolve().parents[2]
PARAMS = """
data: {{source: {src}, betons: {betons}}}
convert: {{max_resolution: 80, write_mode: jpg, max_bad_fraction: 0.3}}
loader: {{num_workers: 1}}
train: {{epochs: 2, batch_size: 8, world_size: 2, img_size: 64, num_classes: 3, warmup_epochs: 1, drop_path_rate: 0.1}}
tracking: {{tracking_uri: '{uri}', experiment: stage-test, system_metrics: false}}
variants:
  nano: {{model: sgformer_nano}}
"""


def train_command(out: Path, params: Path) -> list[str]:
    return [sys.executable, '-m', 'pipeline.train', '--params', str(params), '--variant', 'nano',
            '--models', str(out / 'models'), '--checkpoints', str(out / 'ckpt'),
            '--metrics', str(out / 'metrics'), '--plots', str(out / 'plots')]


def train_env() -> dict[str, str]:
    return dict(os.environ, PYTHONWARNINGS='ignore', MLFLOW_DISABLE_TELEMETRY='true')


def train(out: Path, params: Path) -> subprocess.CompletedProcess:
    return subprocess.run(train_command(out, params), cwd=ROOT, env=train_env(), capture_output=True, text=True,
                          timeout=500)


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_train_stage_two_ranks(tmp_path):
    write_sample(tmp_path / 'src', num_classes=3, train_per_class=12, val_per_class=4)
    uri = f'sqlite:///{tmp_path}/mlflow.db'
    params = tmp_path / 'params.yaml'
    params.write_text(PARAMS.format(src=tmp_path / 'src', betons=tmp_path / 'betons', uri=uri))
    convert(['--params', str(params), '--report', str(tmp_path / 'bad.json'), '--metrics', str(tmp_path / 'c.json')])

    proc = train(tmp_path, params)
    assert proc.returncode == 0, proc.stderr[-4000:]
    model_dir = tmp_path / 'models' / 'nano'
    card = json.loads((model_dir / 'card.json').read_text())
    assert card['model'] == 'sgformer_nano' and len(card['class_index']) == 3
    metrics = json.loads((tmp_path / 'metrics' / 'nano.json').read_text())
    assert {'train_loss', 'val_top1', 'val_ema_top1', 'val_top5'} <= set(metrics)
    rows = list(csv.DictReader((tmp_path / 'plots' / 'nano' / 'train.tsv').open(), delimiter='\t'))
    assert [r['epoch'] for r in rows] == ['0', '1']

    ema = timm.create_model('sgformer_nano', pretrained=True, **card['model_kwargs'], pretrained_cfg_overlay=dict(
        file=str(model_dir / 'ema.safetensors'), num_classes=3)).eval()
    raw = timm.create_model('sgformer_nano', pretrained=True, **card['model_kwargs'], pretrained_cfg_overlay=dict(
        file=str(model_dir / 'model.safetensors'), num_classes=3)).eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert not torch.equal(ema(x), raw(x))  # the EMA is its own set of weights

    client = mlflow.MlflowClient(tracking_uri=uri)
    experiment = client.get_experiment_by_name('stage-test')
    (run,) = client.search_runs([experiment.experiment_id])
    assert run.info.run_name == 'nano' and run.info.status == 'FINISHED'
    assert card['mlflow_run_id'] == run.info.run_id  # the evaluate stage logs into this run
    assert run.data.params['train.epochs'] == '2' and run.data.params['variant.model'] == 'sgformer_nano'
    assert run.data.tags['world_size'] == '2' and len(run.data.tags['git.commit']) == 40
    steps_per_epoch = 36 // 8  # 36 readable train images (3 x 12), global batch 8, drop_last
    assert len(client.get_metric_history(run.info.run_id, 'train/loss')) == 2 * steps_per_epoch
    assert [m.step for m in client.get_metric_history(run.info.run_id, 'val_ema_top1')] == [0, 1]
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id, 'model')}
    assert artifacts == {'model/card.json', 'model/model.safetensors', 'model/ema.safetensors'}

    # A rerun finds the last checkpoint complete: nothing is retrained, and the same run is continued.
    again = train(tmp_path, params)
    assert again.returncode == 0, again.stderr[-4000:]
    (rerun,) = client.search_runs([experiment.experiment_id])
    assert rerun.info.run_id == run.info.run_id
    assert len(client.get_metric_history(run.info.run_id, 'train/loss')) == 2 * steps_per_epoch


@pytest.mark.slow
@pytest.mark.timeout(1200)
def test_kill_9_mid_run_then_rerun_matches_uninterrupted(tmp_path):
    """kill -9 of the whole torchrun process group after the first checkpoint, then a rerun: it
    resumes and ends with exactly the uninterrupted run's numbers. FFCV draws its crops and flips
    from unseeded per-thread generators, so this run turns them off (the seeded batch
    augmentation, mixup and drop-path stay on)."""
    write_sample(tmp_path / 'src', num_classes=3, train_per_class=12, val_per_class=4)
    uri = f'sqlite:///{tmp_path}/mlflow.db'
    params = tmp_path / 'params.yaml'
    params.write_text(PARAMS.format(src=tmp_path / 'src', betons=tmp_path / 'betons', uri=uri).replace(
        'epochs: 2', 'epochs: 3') + 'augment: {scale: [1.0, 1.0], ratio: [1.0, 1.0], hflip: 0.0}\n')
    convert(['--params', str(params), '--report', str(tmp_path / 'bad.json'), '--metrics', str(tmp_path / 'c.json')])
    reference = tmp_path / 'reference'
    reference.mkdir()
    proc = train(reference, params)
    assert proc.returncode == 0, proc.stderr[-4000:]

    interrupted = tmp_path / 'interrupted'
    interrupted.mkdir()
    launch = subprocess.Popen(train_command(interrupted, params), cwd=ROOT, env=train_env(), start_new_session=True,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 400
    while not list((interrupted / 'ckpt' / 'nano').glob('*/step-4')) and launch.poll() is None:
        assert time.monotonic() < deadline
        time.sleep(0.2)
    time.sleep(1.0)  # into the next epoch
    os.killpg(launch.pid, signal.SIGKILL)
    launch.wait()
    assert not (interrupted / 'metrics' / 'nano.json').exists()

    proc = train(interrupted, params)
    assert proc.returncode == 0, proc.stderr[-4000:]
    expected = json.loads((reference / 'metrics' / 'nano.json').read_text())
    got = json.loads((interrupted / 'metrics' / 'nano.json').read_text())
    expected.pop('epoch_time_s'), got.pop('epoch_time_s')
    assert got == expected
    client = mlflow.MlflowClient(tracking_uri=uri)
    runs = client.search_runs([client.get_experiment_by_name('stage-test').experiment_id])
    assert len(runs) == 2  # the reference run and the interrupted-then-resumed one
    assert all(r.info.status == 'FINISHED' for r in runs)


def test_unknown_variant_exits_with_message(tmp_path):
    params = tmp_path / 'params.yaml'
    params.write_text('variants:\n  nano: {model: sgformer_nano}\n')
    proc = subprocess.run([sys.executable, '-m', 'pipeline.train', '--params', str(params), '--variant', 'big'],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0
    assert 'variants.big: no such variant' in proc.stderr and 'Traceback' not in proc.stderr
