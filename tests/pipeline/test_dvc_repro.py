"""The whole pipeline through a real `dvc repro`, and then the README's own commands, in one
throwaway copy of the repository with a shrunken params.yaml (the "tiny overrides"):

- every stage's outputs, DVC metrics and the MLflow store after the first `dvc repro`;
- a second repro does nothing, and an edit to a module a stage imports marks that stage changed;
- a team's data: `dvc push` to a folder remote, then a fresh `git clone` that `dvc pull`s is up
  to date (no stage to rerun) and holds the betons and the exports;
- every shell block of the README that is not marked `readme-test: skip`, extracted from the
  README itself and run verbatim in one bash session (activation included), against a generated
  ImageNet-layout folder for `/datasets/imagenet`: two DVC experiments that compare in `dvc exp
  show`, `dvc metrics diff` and `dvc plots diff`, the ImageNet profile's check, the significance
  command, fine-tuning, and a sweep of queued experiments run by `dvc queue start` (each one MLflow
  run per variant in the repository's store, tagged with its experiment).
"""
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import mlflow
import numpy as np
import pytest
import yaml
from PIL import Image

ROOT = Path(__file__).resolve().parents[2]
BLOCK = re.compile(r'(<!-- readme-test: skip \((?P<why>[^)]*)\) -->\n)?```bash\n(?P<code>.*?)```', re.S)
GIT = ['git', '-c', 'user.name=t', '-c', 'user.email=t@t']


def shrink(params: dict) -> dict:
    params['sample'].update(num_classes=3, train_per_class=8, val_per_class=3)
    params['convert'].update(max_bad_fraction=0.2)  # 2 broken files of ~40
    params['loader'].update(num_workers=1)
    params['train'].update(epochs=1, batch_size=8, warmup_epochs=0)
    params['eval'].update(speed_steps=1, speed_batch_size=2, resolutions=[96], num_pictures=2)
    params['tracking'].update(system_metrics=False)
    return params


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


def project_venv() -> Path:
    """The environment the stages run with: this checkout's .venv, else this interpreter's prefix."""
    return ROOT / '.venv' if (ROOT / '.venv').exists() else Path(sys.executable).resolve().parents[1]


def copy_repo(dest: Path) -> None:
    """The tracked files (as they are in the working tree) in a fresh git repository, with this
    checkout's .venv linked in."""
    files = subprocess.run(['git', 'ls-files', '-z'], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    for rel in filter(None, files.split('\0')):
        if (ROOT / rel).is_file():
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / rel, dest / rel)
    (dest / 'dvc.lock').unlink(missing_ok=True)
    (dest / '.venv').symlink_to(project_venv())
    subprocess.run(['git', 'init', '-q'], cwd=dest, check=True)
    commit(dest, 'copy')


def commit(repo: Path, message: str) -> None:
    subprocess.run(GIT + ['add', '-A'], cwd=repo, check=True)
    subprocess.run(GIT + ['commit', '-qm', message], cwd=repo, check=True)


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


def test_a_queued_experiment_s_stages_run_with_the_repository_s_venv(tmp_path):
    """A queued experiment runs in a temporary copy of the repository without its .venv (git does
    not hold it), from a shell that may have activated none: `pipeline/python` takes DVC_ROOT's."""
    copy, repo = tmp_path / 'repo' / '.dvc' / 'tmp' / 'exps' / 'tmpabc', tmp_path / 'repo'
    (copy / 'pipeline').mkdir(parents=True)
    shutil.copy2(ROOT / 'pipeline' / 'python', copy / 'pipeline' / 'python')
    (repo / '.venv').symlink_to(project_venv())
    env = {k: v for k, v in os.environ.items() if k != 'VIRTUAL_ENV'} | {'DVC_ROOT': str(repo)}
    prefix = subprocess.run([str(copy / 'pipeline' / 'python'), '-c', 'import sys; print(sys.prefix)'], env=env,
                            capture_output=True, text=True, check=True).stdout.strip()
    assert Path(prefix).resolve() == project_venv().resolve()


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_push_then_a_fresh_clone_pulls_the_betons_and_exports_and_nothing_reruns(demo, tmp_path):
    repo, params, _ = demo
    remote, clone = tmp_path / 'remote', tmp_path / 'clone'
    dvc(repo, 'remote', 'add', '-d', 'team', str(remote))  # the README's team remote, a local folder here
    commit(repo, 'team remote')
    dvc(repo, 'push')
    subprocess.run(['git', 'clone', '-q', str(repo), str(clone)], check=True)
    dvc(clone, 'pull')
    assert changed_stages(clone) == set()  # up to date: no stage to rerun, nothing retrained
    assert 'Data and pipelines are up to date' in dvc(clone, 'status')
    for path in ('data/betons/train.beton', 'data/betons/val.beton', 'data/betons/class_index.json',
                 *(f'models/{v}/{name}' for v in params['variants'] for name in ('model.safetensors', 'card.json'))):
        assert (clone / path).read_bytes() == (repo / path).read_bytes(), path
    # what a clone does not get: the checkpoints (resume state) and the local MLflow store
    assert not (clone / 'checkpoints').exists() and not (clone / 'mlflow.db').exists()
    import timm
    import torch
    import sgformer.models  # noqa: F401  (registers the sgformer_* models with timm)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        pulled, original = (timm.create_model(f'local-dir:{r}/models/nano', pretrained=True).eval()(x)
                            for r in (clone, repo))
    torch.testing.assert_close(pulled, original)


TOY_PIPELINE = """
stages:
  gpus:
    cmd: sh gpus.sh
    params: [lr]
    metrics:
      - gpus.json:
          cache: false
"""


def queue_status(repo: Path, env: dict[str, str]) -> str:
    return subprocess.run(['dvc', 'queue', 'status'], cwd=repo, env=env, capture_output=True, text=True,
                          check=True).stdout


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_each_queue_worker_hands_its_environment_to_its_experiments(tmp_path):
    """How the README gives each queued experiment its own GPUs: a worker that `dvc queue start`
    starts runs its experiments with the environment it was started in (on a toy pipeline that
    records CUDA_VISIBLE_DEVICES; each experiment lasts long enough for the second worker to start)."""
    repo = tmp_path / 'toy'
    repo.mkdir()
    subprocess.run(['git', 'init', '-q'], cwd=repo, check=True)
    dvc(repo, 'init', '-q')
    (repo / 'params.yaml').write_text('lr: 0.1\n')
    (repo / 'gpus.sh').write_text('sleep 20; printf \'{"gpus": "%s"}\' "$CUDA_VISIBLE_DEVICES" > gpus.json\n')
    (repo / 'dvc.yaml').write_text(TOY_PIPELINE)
    commit(repo, 'toy')
    dvc(repo, 'exp', 'run', '--queue', '-S', 'lr=1,2')
    shell = dict(env(), PATH=f'{Path(sys.executable).parent}{os.pathsep}{os.environ["PATH"]}')  # workers run `dvc`
    try:
        subprocess.run(['dvc', 'queue', 'start', '-j', '1'], cwd=repo, env=dict(shell, CUDA_VISIBLE_DEVICES='0,1'),
                       check=True, capture_output=True)
        deadline = time.monotonic() + 300
        while 'Worker status: 1 active' not in queue_status(repo, shell):  # worker 1 took the first experiment
            assert time.monotonic() < deadline
            time.sleep(1)
        subprocess.run(['dvc', 'queue', 'start', '-j', '2'], cwd=repo, env=dict(shell, CUDA_VISIBLE_DEVICES='2,3'),
                       check=True, capture_output=True)
        while re.search(r'Queued|Running', status := queue_status(repo, shell)):
            assert time.monotonic() < deadline, status
            time.sleep(2)
    finally:
        subprocess.run(['dvc', 'queue', 'stop'], cwd=repo, env=shell, capture_output=True)
    assert status.count('Success') == 2, status
    shown = json.loads(dvc(repo, 'exp', 'show', '--json'))
    gpus = [rev['data']['metrics']['gpus.json']['data']['gpus'] for baseline in shown
            for exp in baseline.get('experiments') or [] for rev in exp['revs']]
    assert sorted(gpus) == ['0,1', '2,3']


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
@pytest.mark.timeout(3600)
def test_readme_commands_run_verbatim(demo, tmp_path):
    repo, params, _ = demo
    imagenet = imagenet_like(tmp_path / 'imagenet')
    blocks, _ = readme_blocks()
    script = ['set -euo pipefail']
    for i, code in enumerate(blocks):
        script += [f'echo "::block {i}::"', code.replace('/datasets/imagenet', str(imagenet))]
    proc = subprocess.run(['bash', '-c', '\n'.join(script)], cwd=repo, capture_output=True, text=True,
                          env=dict(env(), PATH=os.environ['PATH']), timeout=3500)
    outputs = dict(zip(blocks, re.split(r'::block \d+::\n', proc.stdout + proc.stderr)[1:]))
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-6000:]

    experiments = next(out for code, out in outputs.items() if "++variants.nano.lr" in code)
    assert stages_run(experiments) >= {'train@nano', 'evaluate@nano', 'train@nano_dp'}
    assert re.search(r'^\S*eval_\w+\.json\s+\S+\s+[-\d.e]+\s+[-\d.e]+', experiments, re.M)  # dvc metrics diff
    # every training run is an MLflow run: the demo's two, both variants for train.lr, only nano for its own
    # lr, for the fine-tuning and for the five classes, both variants for each of the sweep's two experiments
    client = mlflow.MlflowClient(tracking_uri=f'sqlite:///{repo}/mlflow.db')
    experiment = client.get_experiment_by_name(params['tracking']['experiment'])
    runs = client.search_runs([experiment.experiment_id])
    assert sorted(r.info.run_name for r in runs) == ['nano'] * 7 + ['nano_dp'] * 4
    shown = json.loads(dvc(repo, 'exp', 'show', '--json'))
    metrics = json.dumps(shown)
    assert 'eval_nano.json' in metrics and 'val_ema_top1' in metrics and '"top1"' in metrics
    assert 'recipes' not in metrics
    assert (repo / 'dvc_plots' / 'index.html').exists()

    sweep = next(out for code, out in outputs.items() if 'dvc queue start' in code)
    queued = dict(re.findall(r"with overrides .*?'train\.lr=([\d.e-]+)'.*?\nQueued experiment '([^']+)'", sweep))
    assert sorted(map(float, queued)) == [0.0005, 0.001]
    for lr, name in queued.items():  # one run per variant per experiment, in the repository's store
        tagged = [r for r in runs if r.data.tags.get('dvc.exp_name') == name]
        assert sorted(r.info.run_name for r in tagged) == ['nano', 'nano_dp'], name
        for run in tagged:
            assert run.info.status == 'FINISHED' and float(run.data.params['train.lr']) == float(lr)
            assert {'val/ema_top1', 'eval/top1'} <= set(run.data.metrics)  # train and evaluate, one run
        (result,) = [rev['data'] for baseline in shown for exp in baseline.get('experiments') or []
                     for rev in exp['revs'] if rev['name'] == name]
        assert {'top1', 'img_s'} <= set(result['metrics']['metrics/eval_nano_dp.json']['data'])
    assert not (repo / '.mlflow-offline').exists()  # everything reached the store
    assert (repo / 'plots' / 'mine' / 'significance_stage0.png').exists()

    card = json.loads((repo / 'models' / 's' / 'card.json').read_text())  # the ImageNet profile's check
    assert card['model'] == 'sgformer_nano' and card['model_kwargs']['num_classes'] == 1000
    assert len(card['class_index']) == 1000
    evaluation = json.loads((repo / 'metrics' / 'eval_s.json').read_text())
    assert evaluation['images'] == 1000 and evaluation['img_size'] == 64
