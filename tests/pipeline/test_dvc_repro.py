"""The whole pipeline through a real `dvc repro`, and then the README's own commands, in one
throwaway copy of the repository with a shrunken params.yaml (the "tiny overrides"):

- every stage's outputs, DVC metrics (one headline file per variant, the same keys in each), the
  charts that open `dvc plots show` and the MLflow store after the first `dvc repro`;
- a second repro does nothing, and an edit to a module a stage imports marks that stage changed;
- every shell block of the README that is not marked `readme-test: skip`, extracted from the
  README itself and run verbatim in one bash session (activation included), against a generated
  ImageNet-layout folder for `/datasets/imagenet`, with COLUMNS=160: three DVC experiments whose
  comparison (`dvc exp show ...`, `dvc metrics show`, `dvc metrics diff`) prints every value in 160
  columns, `dvc plots diff`, the ImageNet profile's check, the significance
  command, fine-tuning, transfer, a sweep of queued experiments run by `dvc queue start` (each
  one MLflow run per variant in the repository's store, tagged with its experiment), and a team
  remote: `dvc push`, then a fresh `git clone` that `dvc pull`s is up to date (no stage to rerun)
  and holds the betons and the exports.
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

from conftest import GIT, commit, copy_repo, project_venv, shrink

ROOT = Path(__file__).resolve().parents[2]
HEADLINE = ['top1', 'top5', 'img_s', 'params_m', 'gmacs', 'gpu_hours']  # sgformer.eval.evaluation.HEADLINE
WIDTH = 160  # the terminal the README's comparison commands fit
BLOCK = re.compile(r'(<!-- readme-test: skip \((?P<why>[^)]*)\) -->\n)?```bash\n(?P<code>.*?)```', re.S)


GIT_IDENTITY = dict(GIT_AUTHOR_NAME='t', GIT_AUTHOR_EMAIL='t@t', GIT_COMMITTER_NAME='t', GIT_COMMITTER_EMAIL='t@t')


def env(**extra: str) -> dict[str, str]:
    return dict(os.environ, DVC_NO_ANALYTICS='1', MLFLOW_DISABLE_TELEMETRY='true', PYTHONWARNINGS='ignore', **extra)


def dvc(repo: Path, *args: str, **extra_env: str) -> str:
    return subprocess.run([sys.executable, '-m', 'dvc', *args], cwd=repo, capture_output=True, text=True, check=True,
                          env=env(**extra_env)).stdout


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
    assert stages_run(first) == {'describe', 'make_sample', 'convert', 'compare'} | {
        f'{stage}@{v}' for stage in ('train', 'evaluate') for v in variants}
    assert {p.name for p in (repo / 'data' / 'betons').iterdir()} == {'train.beton', 'val.beton', 'class_index.json'}
    for v in variants:
        assert {p.name for p in (repo / 'models' / v).iterdir()} == {'card.json', 'config.json', 'model.safetensors',
                                                                    'raw.safetensors'}
        evaluation = json.loads((repo / 'reports' / f'eval_{v}.json').read_text())
        assert {'top1', 'top5', 'img_s', 'gmacs', 'top1_96', 'latency_ms'} <= set(evaluation)
        assert evaluation['images'] == 3 * 3 + 1
        card = json.loads((repo / 'models' / v / 'card.json').read_text())
        assert evaluation['train_gpu_hours'] == card['metrics']['gpu_hours'] > 0
        # the pictures are DVC-cached (plots/<v>/.gitignore); the tables are committed with the experiment
        assert {p.name for p in (repo / 'plots' / v).iterdir()} == {'confusion.csv', 'per_class.tsv', 'images',
                                                                   '.gitignore'}
        assert 'val_ema_top1' in (repo / 'plots' / 'train' / f'{v}.tsv').read_text().splitlines()[0].split('\t')
    assert set(json.loads((repo / 'reports' / 'models.json').read_text())) == set(variants)
    assert json.loads((repo / 'reports' / 'convert.json').read_text())['conversion']['num_classes'] == 3

    # the DVC metrics: one file per variant, the headline keys in each, nothing else
    (shown,) = json.loads(dvc(repo, 'metrics', 'show', '--json')).values()
    assert set(shown['data']) == {f'metrics/{v}.json' for v in variants}
    for v in variants:
        headline = shown['data'][f'metrics/{v}.json']['data']
        evaluation = json.loads((repo / 'reports' / f'eval_{v}.json').read_text())
        assert list(headline) == HEADLINE
        assert headline == dict({k: evaluation[k] for k in HEADLINE[:-1]}, gpu_hours=evaluation['train_gpu_hours'])

    # dvc plots show: val top-1 and train loss of every variant, one chart each, before anything else
    plots = json.loads(dvc(repo, 'plots', 'show', '--json'))['data']
    assert list(plots)[:2] == ['val top-1', 'train loss']
    for chart, field in (('val top-1', 'val_ema_top1'), ('train loss', 'train_loss')):
        (rendered,) = plots[chart]
        values = rendered['content']['data']['values']
        assert rendered['content']['encoding']['y']['field'] == field
        assert sorted({(p['variant'], p['epoch']) for p in values}) == sorted((v, '0') for v in variants)
    assert all(not id_.startswith(('plots/train', 'plots/curves')) for id_ in plots)  # no chart per variant's table
    assert any(id_.endswith('.png') for id_ in plots)
    dvc(repo, 'plots', 'show')
    html = (repo / 'dvc_plots' / 'index.html').read_text()
    assert 0 < html.index('val_top-1') < html.index('train_loss') < html.index(f'plots_{variants[0]}_confusion')

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
    assert changed_stages(repo) == {'describe', 'make_sample', 'convert', 'compare'} | {
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


def start_worker(repo: Path, number: int, env: dict[str, str]) -> None:
    # as from a terminal: a worker started with its output on a pipe that is then closed is not seen
    # by `dvc queue status` (its experiments read `Success` at once)
    subprocess.run(['dvc', 'queue', 'start', '-j', str(number)], cwd=repo, env=env, check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


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
    # workers run `dvc` and commit each experiment: they need it on PATH and a git identity
    shell = dict(env(**GIT_IDENTITY), PATH=f'{Path(sys.executable).parent}{os.pathsep}{os.environ["PATH"]}')
    try:
        start_worker(repo, 1, dict(shell, CUDA_VISIBLE_DEVICES='0,1'))
        deadline = time.monotonic() + 300
        while 'Worker status: 1 active' not in (status := queue_status(repo, shell)):  # worker 1 took the first
            assert time.monotonic() < deadline and 'Failed' not in status, status
            time.sleep(1)
        start_worker(repo, 2, dict(shell, CUDA_VISIBLE_DEVICES='2,3'))
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
    with open(tmp_path / 'readme.log', 'w+') as log:  # a file, as a terminal: see start_worker
        proc = subprocess.run(['bash', '-c', '\n'.join(script)], cwd=repo, stdout=log, stderr=subprocess.STDOUT,
                              env=dict(env(COLUMNS=str(WIDTH), **GIT_IDENTITY), PATH=os.environ['PATH']), timeout=3500)
        log.seek(0)
        printed = log.read()
    outputs = dict(zip(blocks, re.split(r'::block \d+::\n', printed)[1:]))
    assert proc.returncode == 0, printed[-6000:]

    experiments = next(out for code, out in outputs.items() if "++variants.nano.lr" in code)
    assert stages_run(experiments) >= {'train@nano', 'evaluate@nano', 'train@nano_dp', 'compare'}
    # every training run is an MLflow run: the demo's two, both variants for train.lr, only nano for its own
    # lrs, the fine-tuning at 96 px, the transfer and both variants for each of the sweep's two
    # experiments (the ImageNet check logs into an experiment of its own)
    client = mlflow.MlflowClient(tracking_uri=f'sqlite:///{repo}/mlflow.db')
    experiment = client.get_experiment_by_name(params['tracking']['experiment'])
    runs = client.search_runs([experiment.experiment_id])
    assert sorted(r.info.run_name for r in runs) == ['nano'] * 8 + ['nano_dp'] * 4
    # the later blocks commit (the team remote's config): their experiments sit on earlier commits
    shown = json.loads(dvc(repo, 'exp', 'show', '--all-commits', '--json'))
    assert 'recipes' not in json.dumps(shown)
    check_the_comparison(repo, shown, next(out for code, out in outputs.items() if 'dvc exp show' in code))
    diff = json.loads(dvc(repo, 'metrics', 'diff', 'HEAD', '--json'))
    assert any(values.get('old') is not None and values.get('new') is not None
               for file in diff.values() for values in file.values())
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
        assert {'top1', 'img_s'} <= set(result['metrics']['metrics/nano_dp.json']['data'])
    assert not (repo / '.mlflow-offline').exists()  # everything reached the store
    assert (repo / 'plots' / 'mine' / 'significance_stage0.png').exists()

    check_the_teammate_s_clone(repo.parent / 'sgformer-teammate', repo, params)

    card = json.loads((repo / 'models' / 's' / 'card.json').read_text())  # the ImageNet profile's check
    assert card['model'] == 'sgformer_nano' and card['model_kwargs']['num_classes'] == 1000
    assert len(card['class_index']) == 1000
    evaluation = json.loads((repo / 'reports' / 'eval_s.json').read_text())
    assert evaluation['images'] == 1000 and evaluation['img_size'] == 64


def check_the_teammate_s_clone(clone: Path, repo: Path, params: dict) -> None:
    """The README's team remote: the fresh clone that pulled is up to date (no stage to rerun) and
    holds the committed betons and exports, whose model gives the original's logits; it has no
    checkpoints (the resume state) and no MLflow store."""
    assert changed_stages(clone) == set()
    lock = yaml.safe_load(subprocess.run(GIT + ['show', 'HEAD:dvc.lock'], cwd=repo, capture_output=True, text=True,
                                         check=True).stdout)
    for v in params['variants']:
        (out,) = [o for o in lock['stages'][f'train@{v}']['outs'] if o['path'] == f'models/{v}']
        assert out['md5'].endswith('.dir') and (clone / 'models' / v / 'model.safetensors').is_file()
    for name in ('train.beton', 'val.beton', 'class_index.json'):
        assert (clone / 'data' / 'betons' / name).is_file()
    assert not (clone / 'checkpoints').exists() and not (clone / 'mlflow.db').exists()
    import timm
    import torch
    import sgformer.models  # noqa: F401  (registers the sgformer_* models with timm)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        logits = timm.create_model(f'local-dir:{clone}/models/nano', pretrained=True).eval()(x)
    assert logits.shape == (1, params['sample']['num_classes']) and torch.isfinite(logits).all()


def check_the_comparison(repo: Path, shown: list[dict], printed: str) -> None:
    """What the README's comparison commands printed, in a terminal of WIDTH columns: no line
    wider, nothing folded into `…`, and each of the 3 experiments' rows holds its top-1 of both
    variants and its learning rates, as `dvc exp show --json` (`shown`) has them."""
    lines = printed.splitlines()
    assert lines and max(map(len, lines)) <= WIDTH and '…' not in printed, printed
    states = {state['name']: state for b in shown for e in b.get('experiments') or () for state in e['revs']}
    rows = [line for line in lines if line.lstrip().startswith(('├──', '└──'))]
    assert len(rows) == 3, printed
    for row in rows:
        data = states[re.search(r'\[(\S+)\]', row)[1]]['data']
        lrs = {data['params']['params.yaml']['data']['train']['lr'],
               data['params']['params.yaml']['data']['variants']['nano'].get('lr', '-')}
        top1 = {data['metrics'][f'metrics/{v}.json']['data']['top1'] for v in ('nano', 'nano_dp')}
        assert all(f'{value:.5g}' in row.split() for value in top1) and all(str(lr) in row.split() for lr in lrs), row
    assert all(f'metrics/{v}.json' in printed for v in ('nano', 'nano_dp'))  # dvc metrics show / diff: one row each
    # COLUMNS is what rich obeys here: without the pager, the same table in fewer columns loses cells
    narrow = dvc(repo, 'exp', 'show', '--all-commits', '--no-pager', '--only-changed', '--drop', '.*/',
                 '--keep', '.*:top1$', COLUMNS='100')
    assert max(map(len, narrow.splitlines())) <= 100 and '…' in narrow
