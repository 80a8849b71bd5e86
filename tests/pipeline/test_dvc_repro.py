"""The whole pipeline through a real `dvc repro`, and then the README's own commands, in one
throwaway copy of the repository with a shrunken params.yaml (the "tiny overrides"):

- every stage's outputs, DVC metrics and the MLflow store after the first `dvc repro`;
- a second repro does nothing, and an edit to a module a stage imports marks that stage changed;
- every shell block of the README that is not marked `readme-test: skip`, extracted from the
  README itself and run verbatim in one bash session (activation included), against a generated
  ImageNet-layout folder for `/datasets/imagenet`: two DVC experiments that compare in `dvc exp
  show`, `dvc metrics diff` and `dvc plots diff`, the switch to the ImageNet profile, the
  significance command.
"""
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import mlflow
import numpy as np
import pytest
import yaml
from PIL import Image

from conftest import commit, copy_repo, shrink

ROOT = Path(__file__).resolve().parents[2]
BLOCK = re.compile(r'(<!-- readme-test: skip \((?P<why>[^)]*)\) -->\n)?```bash\n(?P<code>.*?)```', re.S)


def env() -> dict[str, str]:
    return dict(os.environ, DVC_NO_ANALYTICS='1', MLFLOW_DISABLE_TELEMETRY='true', PYTHONWARNINGS='ignore')


def dvc(repo: Path, *args: str) -> str:
    return subprocess.run([sys.executable, '-m', 'dvc', *args], cwd=repo, capture_output=True, text=True, check=True,
                          env=env()).stdout


def changed_stages(repo: Path) -> set[str]:
    return set(json.loads(dvc(repo, 'status', '--json')))


def edited(repo: Path, module: str):
    """Append a comment to a module (a code change DVC must notice); returns the undo."""
    path = repo / module
    original = path.read_text()
    path.write_text(original + '\n# edited\n')
    return lambda: path.write_text(original)


def repro(repo: Path) -> str:
    proc = subprocess.run([sys.executable, '-m', 'dvc', 'repro'], cwd=repo, env=env(), capture_output=True, text=True,
                          timeout=1200)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-5000:]
    return proc.stdout + proc.stderr


def stages_run(output: str) -> set[str]:
    return set(re.findall(r"Running stage '([^']+)'", output))


def imagenet_like(root: Path, classes: int = 1000) -> Path:
    """An ImageNet-layout folder with the real number of classes and tiny images (2 train, 1 val each)."""
    rng = np.random.default_rng(0)
    for split, count in (('train', 2), ('val', 1)):
        for k in range(classes):
            folder = root / split / f'n{k:08d}'
            folder.mkdir(parents=True)
            colour = rng.integers(0, 256, 3)
            for i in range(count):
                pixels = np.clip(colour + rng.normal(0, 20, (40, 48, 3)), 0, 255).astype(np.uint8)
                Image.fromarray(pixels).save(folder / f'n{k:08d}_{i}.JPEG', quality=80)
    return root


@pytest.fixture(scope='module')
def demo(tmp_path_factory):
    """The repository copy after the first `dvc repro` of the shrunken demo, committed."""
    repo = tmp_path_factory.mktemp('repo')
    copy_repo(repo)
    params = shrink(yaml.safe_load((repo / 'params.yaml').read_text()))
    (repo / 'params.yaml').write_text(yaml.safe_dump(params, sort_keys=False))
    output = repro(repo)
    commit(repo, 'demo run')  # dvc.lock, metrics, plots and reports are committed, as the README says
    return repo, params, output


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_first_repro_writes_every_output(demo):
    repo, params, first = demo
    variants = list(params['variants'])
    assert len(variants) == 2
    assert stages_run(first) == {'describe', 'make_sample', 'convert'} | {
        f'{stage}@{v}' for stage in ('train', 'evaluate') for v in variants}
    assert {p.name for p in (repo / 'data' / 'betons').iterdir()} == {'train.beton', 'val.beton', 'class_index.json'}
    for v in variants:
        assert {p.name for p in (repo / 'models' / v).iterdir()} == {'card.json', 'config.json', 'model.safetensors',
                                                                    'raw.safetensors'}
        assert 'val_ema_top1' in json.loads((repo / 'metrics' / f'{v}.json').read_text())
        evaluation = json.loads((repo / 'metrics' / f'eval_{v}.json').read_text())
        assert {'top1', 'top5', 'img_s', 'gmacs', 'top1_96'} <= set(evaluation) and evaluation['images'] == 3 * 3 + 1
        # the pictures are DVC-cached (plots/<v>/.gitignore); the tables are committed with the experiment
        assert {p.name for p in (repo / 'plots' / v).iterdir()} == {'train.tsv', 'confusion.csv', 'per_class.tsv',
                                                                   'images', '.gitignore'}
    assert f'metrics/eval_{variants[0]}.json' in dvc(repo, 'metrics', 'show', '--json')

    client = mlflow.MlflowClient(tracking_uri=f'sqlite:///{repo}/mlflow.db')
    experiment = client.get_experiment_by_name(params['tracking']['experiment'])
    runs = {r.info.run_name: r for r in client.search_runs([experiment.experiment_id])}
    assert set(runs) == set(variants)
    for run in runs.values():
        assert {'val/ema_top1', 'eval/top1', 'eval/img_s'} <= set(run.data.metrics)
        logged = {a.path for a in client.list_artifacts(run.info.run_id, 'eval')}
        assert {'eval/confusion.png', 'eval/significance_stage0.png'} <= logged


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_nothing_reruns_and_code_edits_mark_their_stages(demo):
    repo, params, _ = demo
    variants = list(params['variants'])
    assert stages_run(repro(repo)) == set()  # nothing changed, nothing runs
    assert changed_stages(repo) == set()
    # Code a stage imports is one of its dependencies (tests/test_dvc_yaml.py checks every module).
    undo = edited(repo, 'sgformer/eval/pictures.py')
    assert changed_stages(repo) == {f'evaluate@{v}' for v in variants}
    undo()
    undo = edited(repo, 'sgformer/train/trainer.py')
    assert changed_stages(repo) == {f'train@{v}' for v in variants}
    undo()
    undo = edited(repo, 'sgformer/config.py')
    assert changed_stages(repo) == {'describe', 'make_sample', 'convert'} | {
        f'{stage}@{v}' for stage in ('train', 'evaluate') for v in variants}
    undo()
    assert changed_stages(repo) == set()


def readme_blocks() -> tuple[list[str], list[str]]:
    """The README's bash blocks: (run by this test, skipped with a reason)."""
    run, skipped = [], []
    for match in BLOCK.finditer((ROOT / 'README.md').read_text()):
        (skipped if match['why'] else run).append(match['code'])
    return run, skipped


def test_readme_blocks_are_found_and_every_skip_says_why():
    run, skipped = readme_blocks()
    assert run and skipped and len(run) + len(skipped) == (ROOT / 'README.md').read_text().count('```bash')
    assert run[0].strip() == 'source .venv/bin/activate'


@pytest.mark.slow
@pytest.mark.timeout(2400)
def test_readme_commands_run_verbatim(demo, tmp_path):
    repo, params, _ = demo
    imagenet = imagenet_like(tmp_path / 'imagenet')
    blocks, _ = readme_blocks()
    script = ['set -euo pipefail']
    for i, code in enumerate(blocks):
        script += [f'echo "::block {i}::"', code.replace('/datasets/imagenet', str(imagenet))]
    proc = subprocess.run(['bash', '-c', '\n'.join(script)], cwd=repo, capture_output=True, text=True,
                          env=dict(env(), PATH=os.environ['PATH']), timeout=2300)
    outputs = dict(zip(blocks, re.split(r'::block \d+::\n', proc.stdout + proc.stderr)[1:]))
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-6000:]

    experiments = next(out for code, out in outputs.items() if "++variants.nano.lr" in code)
    assert stages_run(experiments) >= {'train@nano', 'evaluate@nano', 'train@nano_dp'}
    # every training run is an MLflow run: the demo's two, both variants for train.lr, only nano for its own lr
    client = mlflow.MlflowClient(tracking_uri=f'sqlite:///{repo}/mlflow.db')
    experiment = client.get_experiment_by_name(params['tracking']['experiment'])
    names = sorted(r.info.run_name for r in client.search_runs([experiment.experiment_id]))
    assert names == ['nano', 'nano', 'nano', 'nano_dp', 'nano_dp']
    shown = json.loads(dvc(repo, 'exp', 'show', '--json'))
    metrics = json.dumps(shown)
    assert 'eval_nano.json' in metrics and 'val_ema_top1' in metrics and '"top1"' in metrics
    assert 'recipes' not in metrics
    diff = json.loads(dvc(repo, 'metrics', 'diff', 'HEAD', '--json'))
    assert any(values.get('old') is not None and values.get('new') is not None
               for file in diff.values() for values in file.values())
    assert (repo / 'dvc_plots' / 'index.html').exists()
    assert (repo / 'plots' / 'mine' / 'significance_stage0.png').exists()

    card = json.loads((repo / 'models' / 's' / 'card.json').read_text())  # the ImageNet profile's check
    assert card['model'] == 'sgformer_nano' and card['model_kwargs']['num_classes'] == 1000
    assert len(card['class_index']) == 1000
    evaluation = json.loads((repo / 'metrics' / 'eval_s.json').read_text())
    assert evaluation['images'] == 1000 and evaluation['img_size'] == 64
