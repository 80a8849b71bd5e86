"""Bad input and full disks end in one line naming the file and the fix, exit code 1, no traceback,
and nothing half-written: a full disk (simulated with RLIMIT_FSIZE) during convert, a checkpoint
save and an export leaves the previous complete betons / checkpoint / export usable; a truncated
or foreign beton is named before a loader reads it; the folder backend skips what convert reported."""
import json
import os
import resource
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from sgformer.config import Sample
from sgformer.datasets.beton import check_beton
from sgformer.datasets.sample import write_sample

ROOT = Path(__file__).resolve().parents[2]
PARAMS = """
data: {{source: {src}, betons: {betons}, backend: {backend}}}
convert: {{max_resolution: 80, write_mode: jpg, max_bad_fraction: 0.3}}
loader: {{num_workers: 1}}
train: {{epochs: {epochs}, batch_size: 8, img_size: 64, num_classes: 3, warmup_epochs: 1}}
tracking: {{tracking_uri: 'sqlite:///{tmp}/mlflow.db', experiment: faults, system_metrics: false}}
eval: {{batch_size: 8, speed_batch_size: 2, speed_steps: 1, resolutions: [], num_pictures: 2}}
variants:
  nano: {{model: sgformer_nano}}
"""


def stage(module: str, tmp: Path, *args: str, file_limit: int | None = None) -> subprocess.CompletedProcess:
    """Run `python -m pipeline.<module>` with `--params <tmp>/params.yaml`; with `file_limit`, no file
    may grow past that many bytes (SIGXFSZ ignored, so a write fails with EFBIG as on a full disk)."""
    def limit():
        resource.setrlimit(resource.RLIMIT_FSIZE, (file_limit, file_limit))
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    env = dict(os.environ, PYTHONWARNINGS='ignore', MLFLOW_DISABLE_TELEMETRY='true')
    return subprocess.run([sys.executable, '-m', f'pipeline.{module}', '--params', str(tmp / 'params.yaml'), *args],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=600,
                          preexec_fn=limit if file_limit else None)


def one_line_error(proc: subprocess.CompletedProcess, *words: str) -> str:
    """The last stderr line is the error: `error: ...` holding `words`, and there is no traceback."""
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert 'Traceback' not in proc.stderr, proc.stderr[-3000:]
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith('error: ') and all(w in last for w in words), last
    return last


def outputs(tmp: Path) -> list[str]:
    return ['--report', str(tmp / 'report.json'), '--models', str(tmp / 'models'), '--checkpoints',
            str(tmp / 'ckpt'), '--plots', str(tmp / 'plots')]


@pytest.fixture(scope='module')
def data(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp('faults')
    write_sample(tmp / 'src', Sample(num_classes=3, train_per_class=8, val_per_class=2))
    write_params(tmp)
    proc = stage('convert', tmp, '--report', str(tmp / 'report.json'))
    assert proc.returncode == 0, proc.stderr[-3000:]
    return tmp


def write_params(tmp: Path, backend: str = 'ffcv', epochs: int = 1) -> None:
    (tmp / 'params.yaml').write_text(PARAMS.format(src=tmp / 'src', betons=tmp / 'betons', backend=backend,
                                                   epochs=epochs, tmp=tmp))


@pytest.mark.timeout(300)
def test_a_full_disk_during_convert_keeps_the_previous_betons(data):
    before = {p.name: p.read_bytes() for p in (data / 'betons').iterdir()}
    proc = stage('convert', data, '--report', str(data / 'r2.json'), file_limit=200_000)
    one_line_error(proc, 'no space left', str(data / 'betons'), 'file size limit')
    assert {p.name: p.read_bytes() for p in (data / 'betons').iterdir()} == before  # untouched, no .tmp left
    check_beton(data / 'betons' / 'train.beton')


@pytest.mark.timeout(300)
def test_a_truncated_or_foreign_beton_is_named_before_loading(data, tmp_path):
    shutil.copytree(data / 'betons', tmp_path / 'betons')
    shutil.copytree(data / 'src', tmp_path / 'src')
    write_params(tmp_path)
    train = tmp_path / 'betons' / 'train.beton'
    with train.open('r+b') as f:
        f.truncate(train.stat().st_size // 2)
    one_line_error(stage('train', tmp_path, '--variant', 'nano', *outputs(tmp_path)), 'train.beton: truncated',
                   'dvc repro convert')
    train.write_bytes(b'<html>not a beton</html>' * 10)
    one_line_error(stage('train', tmp_path, '--variant', 'nano', *outputs(tmp_path)), 'train.beton: not an FFCV beton')
    assert not (tmp_path / 'models').exists() and not (tmp_path / 'plots').exists()


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_a_full_disk_during_a_checkpoint_save_keeps_the_previous_checkpoint(data, tmp_path, kill_when):
    """A run stopped after its first checkpoint is resumed on a disk too small for the next one:
    one line, the first checkpoint stays complete and resumable, no partial save is left."""
    for name in ('betons', 'src'):
        shutil.copytree(data / name, tmp_path / name)
    shutil.copy(data / 'report.json', tmp_path / 'report.json')
    write_params(tmp_path, epochs=3)
    command = [sys.executable, '-m', 'pipeline.train', '--params', str(tmp_path / 'params.yaml'), '--variant', 'nano',
               *outputs(tmp_path)]
    first = kill_when(command, lambda: next((tmp_path / 'ckpt' / 'nano').glob('*/step-[0-9]'), None), cwd=ROOT,
                      env=dict(os.environ, PYTHONWARNINGS='ignore', MLFLOW_DISABLE_TELEMETRY='true'))
    run = first.parent
    proc = stage('train', tmp_path, '--variant', 'nano', *outputs(tmp_path), file_limit=4_000_000)
    one_line_error(proc, 'no space left')
    assert sorted(p.name for p in run.iterdir() if p.name.startswith('step')) == [first.name]
    proc = stage('train', tmp_path, '--variant', 'nano', *outputs(tmp_path))
    assert proc.returncode == 0, proc.stderr[-3000:]  # the rerun with space resumes and finishes
    assert f'resuming {run} at step {first.name.removeprefix("step-")}' in proc.stderr
    assert json.loads((tmp_path / 'models' / 'nano' / 'card.json').read_text())['metrics']['val_top1'] >= 0


@pytest.mark.timeout(300)
def test_a_full_disk_during_an_import_keeps_the_previous_export(tmp_path):
    import argparse

    import torch
    fixture = torch.load(ROOT / 'tests' / 'fixtures' / 'official_sgformer_tiny.pt', weights_only=True)
    torch.save({'state_dict_ema': fixture['state_dict'], 'args': argparse.Namespace()}, tmp_path / 'official.pth')
    command = [sys.executable, '-m', 'pipeline.tools.import_official', '--checkpoint', str(tmp_path / 'official.pth'),
               '--model', 'sgformer_nano', '--out', str(tmp_path / 'export'), '--num-classes', '10']
    assert subprocess.run(command, cwd=ROOT, capture_output=True, timeout=200).returncode == 0
    before = {p.name: p.read_bytes() for p in (tmp_path / 'export').iterdir()}

    def limit():
        resource.setrlimit(resource.RLIMIT_FSIZE, (200_000, 200_000))
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    proc = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=200, preexec_fn=limit)
    one_line_error(proc, 'no space left')
    assert {p.name: p.read_bytes() for p in (tmp_path / 'export').iterdir()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ['export', 'official.pth']  # no temporary folder left


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_the_folder_backend_skips_unreadable_files_with_or_without_the_convert_report(data, tmp_path):
    write_params(data, backend='folder')
    try:
        reported = stage('train', data, '--variant', 'nano', *outputs(tmp_path),
                         '--report', str(data / 'report.json'))  # the later --report wins
        unreported = stage('train', data, '--variant', 'nano', *outputs(tmp_path / 'no-report'))
    finally:
        write_params(data)
    assert reported.returncode == 0, reported.stderr[-3000:]
    assert json.loads((tmp_path / 'models' / 'nano' / 'card.json').read_text())['metrics']['val_top1'] >= 0
    assert unreported.returncode == 0, unreported.stderr[-3000:]
    assert 'folder backend: leaving out 2 unreadable images' in unreported.stderr  # checked itself, as convert does
