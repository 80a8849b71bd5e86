"""The trainer's step through FSDP2: 2 gloo ranks under a real torchrun train exactly like one plain
process (augmentation, clipping, fused AdamW, EMA, schedule included), and a run killed mid-way
resumes from its DCP checkpoint to the same final weights."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

WORKER = Path(__file__).with_name('fsdp_worker.py')
ENV = dict(os.environ, PYTHONWARNINGS='ignore', OMP_NUM_THREADS='1')


def run_worker(tmp_path: Path, name: str, nproc: int, ckpt: str, *extra: str) -> subprocess.CompletedProcess:
    out = tmp_path / f'{name}.json'
    launcher = [sys.executable] if nproc == 1 else [sys.executable, '-m', 'torch.distributed.run', '--standalone',
                                                   f'--nproc_per_node={nproc}']
    cmd = launcher + [str(WORKER), '--out', str(out), '--ckpt', str(tmp_path / ckpt), *extra]
    return subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=300)


def result(tmp_path: Path, name: str) -> dict:
    return json.loads((tmp_path / f'{name}.json').read_text())


@pytest.fixture(scope='module')
def two_ranks(tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp('fsdp')
    proc = run_worker(tmp_path, 'two', 2, 'ckpt-two')
    assert proc.returncode == 0, proc.stderr[-3000:]
    return tmp_path, result(tmp_path, 'two')


@pytest.mark.slow
def test_two_ranks_match_one_process(two_ranks, tmp_path):
    _, sharded = two_ranks
    proc = run_worker(tmp_path, 'one', 1, 'ckpt-one')
    assert proc.returncode == 0, proc.stderr[-3000:]
    single = result(tmp_path, 'one')
    assert sharded['sharded'] and not single['sharded']
    assert list(sharded['losses']) == [str(i) for i in range(6)]
    for step, loss in single['losses'].items():
        assert sharded['losses'][step] == pytest.approx(loss, abs=1e-5)
    for key in ('logits', 'ema_logits'):
        for row_a, row_b in zip(single[key], sharded[key]):
            assert row_a == pytest.approx(row_b, abs=1e-5)
    assert sharded['lr'] == pytest.approx(1e-5)  # cosine ended at min_lr


@pytest.mark.slow
def test_ema_differs_from_raw_weights(two_ranks):
    _, sharded = two_ranks
    gap = max(abs(a - b) for ra, rb in zip(sharded['logits'], sharded['ema_logits']) for a, b in zip(ra, rb))
    assert gap > 1e-3


@pytest.mark.slow
def test_killed_run_resumes_to_identical_weights(two_ranks, tmp_path):
    _, uninterrupted = two_ranks
    crashed = run_worker(tmp_path, 'resumed', 2, 'ckpt', '--crash-after', '3')
    assert crashed.returncode != 0
    assert sorted(p.name for p in (tmp_path / 'ckpt').iterdir()) == ['step-2']  # only complete checkpoints
    resumed = run_worker(tmp_path, 'resumed', 2, 'ckpt')
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    out = result(tmp_path, 'resumed')
    assert out['start'] == 2
    assert out['logits'] == uninterrupted['logits']  # bit-identical in deterministic CPU mode
    assert out['ema_logits'] == uninterrupted['ema_logits']
    assert {k: uninterrupted['losses'][k] for k in out['losses']} == out['losses']
