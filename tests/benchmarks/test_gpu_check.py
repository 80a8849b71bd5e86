"""`benchmarks/gpu_check.py --smoke` runs end to end on CPU: JSON with the production/bare ratio and
the per-step op counts outside the model, one markdown table, and no mlflow / ffcv / dvc imported.
Speed is measured by the benchmark, not asserted here."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope='module')
def smoke(tmp_path_factory):
    out = tmp_path_factory.mktemp('gpu_check') / 'gpu.json'
    env = dict(os.environ, PYTHONPATH=str(ROOT), PYTHONWARNINGS='ignore')
    proc = subprocess.run([sys.executable, 'benchmarks/gpu_check.py', '--smoke', '--out', str(out)], cwd=ROOT,
                          env=env, capture_output=True, text=True, timeout=280)
    return proc, out


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_smoke_writes_json_and_table(smoke):
    proc, out = smoke
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(out.read_text())
    assert isinstance(result['production_vs_bare'], float) and result['production_vs_bare'] > 0
    assert result['production']['bare_reference']['kind'] == 'eager'  # nothing compiles in the smoke run
    assert result['forbidden_imports'] == []  # neither mlflow, ffcv nor dvc was imported
    assert set(result['targets']) >= {'production_vs_bare', 'ops_constant_across_batches', 'ops_constant_across_models',
                                      'ops_constant_with_accumulation'}
    table = [line for line in proc.stdout.splitlines() if line.startswith('|')]
    assert table[0].startswith('| measurement |') and set(table[1]) == {'|', '-'}
    assert any('production step sgformer_nano' in line for line in table)
    assert result['table'] in proc.stdout


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_outside_model_ops_do_not_grow_with_parameters_or_batch(smoke):
    proc, out = smoke
    assert proc.returncode == 0, proc.stderr[-3000:]
    ops = json.loads(out.read_text())['outside_model_ops']
    totals = ops['totals']
    assert set(totals) == {'sgformer_nano', 'sgformer_s'}
    assert all(set(by_batch) == {'8', '32'} for by_batch in totals.values())
    assert all(n > 0 for by_batch in totals.values() for n in by_batch.values())
    breakdown = {model: {batch: c['ranges'] for batch, c in by_batch.items()}
                 for model, by_batch in ops['counts'].items()}
    accumulated = ops['accumulated']['totals']  # grad_accum_steps=2: more ops per step, still none per image
    assert set(accumulated) == {'8', '32'} and len(set(accumulated.values())) == 1, accumulated
    assert len({n for by_batch in totals.values() for n in by_batch.values()}) == 1, (
        f'ops dispatched per step outside forward/backward differ: {totals}; per range: {breakdown}; '
        f"most frequent per range: {ops['counts']['sgformer_s']['8']['top_ops']}")
