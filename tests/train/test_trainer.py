"""`Trainer` under a real 2-rank gloo torchrun: it learns, evaluates model and EMA, survives a
kill mid-epoch with identical results, and guards against NaN losses."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from sgformer.train.trainer import MEASURED_KEYS

WORKER = Path(__file__).with_name('trainer_worker.py')
ENV = dict(os.environ, PYTHONWARNINGS='ignore', OMP_NUM_THREADS='1')


def run(tmp_path: Path, name: str, nproc: int, *extra: str) -> tuple[subprocess.CompletedProcess, Path]:
    out = tmp_path / f'{name}.json'
    launcher = [sys.executable] if nproc == 1 else [sys.executable, '-m', 'torch.distributed.run', '--standalone',
                                                   f'--nproc_per_node={nproc}']
    proc = subprocess.run(launcher + [str(WORKER), '--out', str(out), *extra], env=ENV, capture_output=True,
                          text=True, timeout=400)
    return proc, out


def without_times(history: list[dict]) -> list[dict]:
    return [{k: v for k, v in row.items() if k not in MEASURED_KEYS} for row in history]


@pytest.fixture(scope='module')
def uninterrupted(tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp('trainer')
    proc, out = run(tmp_path, 'full', 2, '--ckpt', str(tmp_path / 'ckpt'))
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(out.read_text())


@pytest.mark.slow
def test_learns_and_evaluates_ema(uninterrupted):
    history = uninterrupted['history']
    assert [row['epoch'] for row in history] == [0, 1, 2]
    assert history[-1]['train_loss'] < 0.5 * history[0]['train_loss']
    assert history[-1]['val_top1'] >= 0.9
    assert 'val_ema_top1' in history[-1] and history[-1]['val_ema_loss'] != history[-1]['val_loss']
    assert uninterrupted['ema_weights_sum'] != uninterrupted['weights_sum']
    assert history[-1]['lr'] == pytest.approx(1e-5)  # cosine reached min_lr on the last step
    assert uninterrupted['step'] == 18 and not uninterrupted['resumed']


@pytest.mark.slow
def test_kill_mid_epoch_then_rerun_gives_identical_results(uninterrupted, tmp_path):
    crashed, _ = run(tmp_path, 'resumed', 2, '--ckpt', str(tmp_path / 'ckpt'), '--crash-at', '2:3')
    assert crashed.returncode != 0
    assert sorted(p.name for p in (tmp_path / 'ckpt').iterdir()) == ['step-12', 'step-6']
    proc, out = run(tmp_path, 'resumed', 2, '--ckpt', str(tmp_path / 'ckpt'))
    assert proc.returncode == 0, proc.stderr[-3000:]
    resumed = json.loads(out.read_text())
    assert resumed['resumed']
    assert without_times(resumed['history']) == without_times(uninterrupted['history'])
    assert resumed['weights_sum'] == uninterrupted['weights_sum']
    assert resumed['ema_weights_sum'] == uninterrupted['ema_weights_sum']


@pytest.mark.slow
def test_nan_steps_are_skipped_then_abort(tmp_path):
    proc, out = run(tmp_path, 'skip', 1, '--ckpt', str(tmp_path / 'a'), '--epochs', '1', '--nan-steps', '1,2')
    assert proc.returncode == 0, proc.stderr[-3000:]
    skip = json.loads(out.read_text())
    assert 'error' not in skip and skip['skipped'] == 2 and skip['step'] == 6  # 6 batches, 2 of them skipped
    assert skip['history'][0]['train_loss'] == skip['history'][0]['train_loss']  # the mean of the 4 finite losses

    proc, out = run(tmp_path, 'abort', 1, '--ckpt', str(tmp_path / 'b'), '--epochs', '1', '--nan-steps', '1,2,3')
    assert proc.returncode == 0, proc.stderr[-3000:]
    abort = json.loads(out.read_text())
    # read back every 2 steps without waiting on the device: the abort comes within 2 steps of the 3rd
    assert 'NaN/inf for 3 consecutive steps' in abort['error'] and abort['skipped'] == 3 and abort['step'] <= 6


@pytest.mark.slow
def test_gradient_accumulation_ends_at_the_unaccumulated_weights(tmp_path):
    """1 rank x 4 micro-steps and 2 ranks (FSDP2) x 2 micro-steps reach the weights of 1 rank x 1
    step of the same global batch (float32; no drop-path; no random crops in this loader)."""
    weights = {}
    for name, nproc, micro_steps in (('plain', 1, 1), ('accum4', 1, 4), ('fsdp_accum2', 2, 2)):
        proc, out = run(tmp_path, name, nproc, '--ckpt', str(tmp_path / name), '--epochs', '1', '--drop-path', '0',
                        '--grad-accum', str(micro_steps), '--weights-out', str(tmp_path / f'{name}.pt'))
        assert proc.returncode == 0, proc.stderr[-3000:]
        assert json.loads(out.read_text())['step'] == 6  # optimizer steps, not micro-steps
        weights[name] = torch.load(tmp_path / f'{name}.pt', weights_only=True)
    for name in ('accum4', 'fsdp_accum2'):
        for part in ('model', 'ema'):
            for key, expected in weights['plain'][part].items():
                torch.testing.assert_close(weights[name][part][key], expected, rtol=1e-4, atol=1e-5,
                                           msg=lambda m: f'{name} {part} {key}: {m}')
