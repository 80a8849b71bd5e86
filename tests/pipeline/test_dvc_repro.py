"""The whole pipeline through a real `dvc repro`, in a throwaway copy of the repository with a
shrunken params.yaml: every stage's outputs, DVC metrics, the MLflow store, a second repro that
does nothing, and a one-variant param change that reruns only that variant."""
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import mlflow
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]


def shrink(params: dict) -> dict:
    params['sample'].update(num_classes=3, train_per_class=8, val_per_class=3)
    params['convert'].update(max_bad_fraction=0.2)  # 2 broken files of ~40
    params['loader'].update(num_workers=1)
    params['train'].update(epochs=1, batch_size=8, num_classes=3, warmup_epochs=0)
    params['eval'].update(speed_steps=1, speed_batch_size=2, resolutions=[96], num_pictures=2)
    params['tracking'].update(system_metrics=False)
    return params


def copy_repo(dest: Path) -> None:
    files = subprocess.run(['git', 'ls-files', '-z'], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    for rel in filter(None, files.split('\0')):
        if (ROOT / rel).is_file():
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / rel, dest / rel)
    (dest / 'dvc.lock').unlink(missing_ok=True)
    git = ['git', '-c', 'user.name=t', '-c', 'user.email=t@t']
    subprocess.run(['git', 'init', '-q'], cwd=dest, check=True)
    subprocess.run(git + ['add', '-A'], cwd=dest, check=True)
    subprocess.run(git + ['commit', '-qm', 'copy'], cwd=dest, check=True)


def repro(repo: Path) -> str:
    env = dict(os.environ, DVC_NO_ANALYTICS='1', MLFLOW_DISABLE_TELEMETRY='true', PYTHONWARNINGS='ignore',
               PATH=f'{Path(sys.executable).parent}{os.pathsep}{os.environ["PATH"]}')
    proc = subprocess.run([sys.executable, '-m', 'dvc', 'repro'], cwd=repo, env=env, capture_output=True, text=True,
                          timeout=1200)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-5000:]
    return proc.stdout + proc.stderr


def stages_run(output: str) -> set[str]:
    return set(re.findall(r"Running stage '([^']+)'", output))


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_dvc_repro_end_to_end(tmp_path):
    repo = tmp_path / 'repo'
    copy_repo(repo)
    params = shrink(yaml.safe_load((repo / 'params.yaml').read_text()))
    (repo / 'params.yaml').write_text(yaml.safe_dump(params, sort_keys=False))
    variants = list(params['variants'])
    assert len(variants) == 2

    first = repro(repo)
    assert stages_run(first) == {'describe', 'make_sample', 'convert'} | {
        f'{stage}@{v}' for stage in ('train', 'evaluate') for v in variants}
    assert {p.name for p in (repo / 'data' / 'betons').iterdir()} == {'train.beton', 'val.beton', 'class_index.json'}
    for v in variants:
        assert {p.name for p in (repo / 'models' / v).iterdir()} == {'card.json', 'model.safetensors', 'ema.safetensors'}
        assert 'val_ema_top1' in json.loads((repo / 'metrics' / f'{v}.json').read_text())
        evaluation = json.loads((repo / 'metrics' / f'eval_{v}.json').read_text())
        assert {'top1', 'top5', 'img_s', 'gmacs', 'top1_96'} <= set(evaluation) and evaluation['images'] == 3 * 3 + 1
        assert {p.name for p in (repo / 'plots' / v).iterdir()} == {'train.tsv', 'confusion.csv', 'per_class.tsv', 'images'}
    shown = subprocess.run([sys.executable, '-m', 'dvc', 'metrics', 'show', '--json'], cwd=repo, capture_output=True,
                           text=True, check=True, env=dict(os.environ, DVC_NO_ANALYTICS='1')).stdout
    assert f'metrics/eval_{variants[0]}.json' in shown

    client = mlflow.MlflowClient(tracking_uri=f'sqlite:///{repo}/mlflow.db')
    experiment = client.get_experiment_by_name(params['tracking']['experiment'])
    runs = {r.info.run_name: r for r in client.search_runs([experiment.experiment_id])}
    assert set(runs) == set(variants)
    for run in runs.values():
        assert {'val_ema_top1', 'eval/top1', 'eval/img_s'} <= set(run.data.metrics)
        logged = {a.path for a in client.list_artifacts(run.info.run_id, 'eval')}
        assert {'eval/confusion.png', 'eval/significance_stage0.png'} <= logged
        assert {a.path for a in client.list_artifacts(run.info.run_id, 'model')} >= {'model/ema.safetensors'}

    assert stages_run(repro(repo)) == set()  # nothing changed, nothing runs

    changed, kept = variants
    old_weights = (repo / 'models' / changed / 'ema.safetensors').read_bytes()
    kept_weights = (repo / 'models' / kept / 'ema.safetensors').read_bytes()
    params['variants'][changed]['lr'] = 5e-4
    (repo / 'params.yaml').write_text(yaml.safe_dump(params, sort_keys=False))
    third = repro(repo)
    # `describe` reads the whole `variants` section (it is cheap); of the variants only `changed` reruns
    assert stages_run(third) - {'describe'} == {f'train@{changed}', f'evaluate@{changed}'}
    assert (repo / 'models' / changed / 'ema.safetensors').read_bytes() != old_weights  # retrained, not resumed
    assert (repo / 'models' / kept / 'ema.safetensors').read_bytes() == kept_weights
    runs = client.search_runs([experiment.experiment_id])
    assert sorted(r.info.run_name for r in runs) == sorted(variants + [changed])  # a new run for the new settings
