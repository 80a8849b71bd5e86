"""`benchmarks/bench_budget.py` on a tiny sample: both train-stage runs end, the progressive one
trains at the ramp's sides, and the JSON holds each run's cost, top-1 and the ratios. Speed is
measured by the benchmark, not asserted here."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
@pytest.mark.timeout(400)
def test_both_runs_end_with_their_cost_and_top1(tmp_path):
    out = tmp_path / 'budget.json'
    command = [sys.executable, 'benchmarks/bench_budget.py', '--epochs', '3', '--start-ramp', '1', '--end-ramp', '2',
               '--train-per-class', '6', '--out', str(out)]
    proc = subprocess.run(command, cwd=ROOT, env=dict(os.environ, PYTHONWARNINGS='ignore'), capture_output=True,
                          text=True, timeout=380)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(out.read_text())
    fixed, progressive = result['runs']['fixed'], result['runs']['progressive']
    assert fixed['sides'] == [96, 96, 96] and progressive['sides'] == [64, 64, 96]
    for run in (fixed, progressive):
        assert run['wall_s'] > 0 and run['gpu_hours'] > 0 and 0 <= run['top1'] <= 1
    assert result['ratios']['wall'] == pytest.approx(progressive['wall_s'] / fixed['wall_s'])
    assert set(result['targets']) == {'wall', 'top1'}
    assert 'progressive / fixed: wall' in proc.stdout
