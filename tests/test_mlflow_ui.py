"""The MLflow UI (3.17) as a user opens it after the pipeline: two variants logged through the
stages' own tracking calls into a real `mlflow server` on 127.0.0.1, then its pages rendered by
headless Chromium (`--dump-dom` prints the page once its scripts have loaded the data): the
experiment's Models page in model-training mode lists each variant's model with its evaluated
top-1, the runs page lists the runs, a run's page shows its description.

MLflow 3.17's UI takes its mode from the sidebar's "GenAI | Model training" switch (kept by the
browser; `?workflowType=machine_learning` in a URL), not from the experiment's
`mlflow.experimentKind` tag: a fresh browser opens every experiment in GenAI mode, where the Models
page reads "Agent versions". The test pins that too, as the README tells users to flip the switch.
"""
import os
import shutil
import subprocess
import tempfile
import time
from html.parser import HTMLParser

import mlflow
import pytest

from sgformer.config import Tracking, load_params
from sgformer.eval.evaluation import log_evaluation
from sgformer.tracking import EXPERIMENT_KIND, NOTE_TAG, Tracker, run_description
from test_tracking_server import VARIANTS, Server, betons, export, log_fake_training  # noqa: F401  (fixtures)

CHROMIUM = shutil.which('chromium') or shutil.which('chromium-browser')
TRAINING_MODE = 'workflowType=machine_learning'

pytestmark = pytest.mark.skipif(CHROMIUM is None and not os.environ.get('CI'),
                                reason='chromium is not installed (apt-get install chromium; `make test` installs it)')


class _Text(HTMLParser):
    """The text a page shows: its text nodes outside scripts and styles."""

    def __init__(self):
        super().__init__()
        self.parts, self._hidden = [], 0

    def handle_starttag(self, tag, attrs):
        self._hidden += tag in ('script', 'style')

    def handle_endtag(self, tag):
        self._hidden -= tag in ('script', 'style') and self._hidden > 0

    def handle_data(self, data):
        if not self._hidden and data.strip():
            self.parts.append(data.strip())


def rendered(url: str, expected: list[str], attempts: int = 4) -> list[str]:
    """The text nodes of `url` once headless Chromium has run its scripts (in a fresh profile: no
    mode remembered), tried again (longer) until every string of `expected` shows."""
    assert CHROMIUM, 'chromium is needed in CI (make test installs TEST_APT_PACKAGES)'
    for attempt in range(1, attempts + 1):
        with tempfile.TemporaryDirectory() as profile:
            command = [CHROMIUM, '--headless=new', '--no-sandbox', '--disable-gpu', '--disable-dev-shm-usage',
                       '--no-first-run', f'--user-data-dir={profile}', '--window-size=3200,1400',
                       f'--virtual-time-budget={15000 * attempt}', '--dump-dom', url]
            dom = subprocess.run(command, capture_output=True, text=True, timeout=180).stdout
        parser = _Text()
        parser.feed(dom)
        if all(text in parser.parts for text in expected):
            break
        time.sleep(1)
    return parser.parts


def ui_number(value: float) -> str:
    """A metric as the UI writes it (JavaScript's shortest round-trip form, as Python's repr)."""
    return repr(value).removesuffix('.0')


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_models_page_lists_each_variant_s_model_with_its_evaluated_top1(export, betons, tmp_path):
    (tmp_path / 'store').mkdir()
    server = Server(tmp_path / 'store').start()
    try:
        _check_pages(server, export, betons, tmp_path)
    finally:
        server.stop()


def _check_pages(server, export, betons, tmp_path):
    (tmp_path / 'params.yaml').write_text(VARIANTS)
    params = load_params(tmp_path / 'params.yaml')
    tracking = Tracking(tracking_uri=server.uri, experiment='sgformer', system_metrics=False,
                        offline_dir=str(tmp_path / 'offline'))
    top1 = {'nano': 0.862, 'nano_dp': 0.872}
    descriptions = {}
    for name in params.variants:  # what the train stage logs into a fresh run, then the evaluate stage
        descriptions[name] = run_description(params.variants[name], params.differences(name))
        train = Tracker(tracking, run_name=name)
        train.log_params(params.run_settings(name))
        train.describe(descriptions[name])
        train.log_data(betons)
        log_fake_training(train, range(1, 3), range(2))
        train.log_model(export, step=1)
        train.end()
        card = dict(variant=name, model='sgformer_nano', mlflow_run_id=train.run_id)
        results = dict(top1=top1[name], top5=1.0, loss=0.5, img_size=64, images=500, params_m=2.5, gmacs=0.07,
                       img_s=250.5, latency_ms=4.0, speed_batch_size=64, speed_device='cpu', speed_dtype='float32')
        log_evaluation(name, card, results, per_class={'n01': 0.9}, pictures=[], tracking=tracking, data=betons)
    assert not (tmp_path / 'offline').exists()  # everything arrived
    assert descriptions['nano_dp'] == 'sgformer_nano at 64 px, 8 epochs; differs from train: drop_path_rate 0.1'

    client = mlflow.MlflowClient(server.uri)
    experiment = client.get_experiment_by_name('sgformer')
    assert experiment.tags[EXPERIMENT_KIND[0]] == EXPERIMENT_KIND[1]
    runs = {r.info.run_name: r for r in client.search_runs([experiment.experiment_id])}
    assert {name: run.data.tags[NOTE_TAG] for name, run in runs.items()} == descriptions
    page = f'{server.uri}/#/experiments/{experiment.experiment_id}'

    models = rendered(f'{page}/models?{TRAINING_MODE}', ['nano', 'nano_dp', ui_number(top1['nano'])])
    assert 'Models' in models and 'Agent versions' not in models, models
    assert {'nano', 'nano_dp', 'eval/top1', 'imagenet-val (#' + _digest(client, runs['nano']) + ')'} <= set(models)
    assert ui_number(top1['nano']) in models and ui_number(top1['nano_dp']) in models, models

    genai = rendered(f'{page}/models', ['nano', 'Agent versions'])  # a fresh browser, the tag notwithstanding
    assert 'Agent versions' in genai, genai

    listed = rendered(f'{page}/runs?{TRAINING_MODE}', ['nano', 'nano_dp', 'Models'])
    assert {'nano', 'nano_dp', 'Runs', 'Models'} <= set(listed) and 'Agent versions' not in listed, listed
    run_page = rendered(f"{page}/runs/{runs['nano_dp'].info.run_id}?{TRAINING_MODE}", [descriptions['nano_dp']])
    assert 'Description' in run_page and descriptions['nano_dp'] in run_page, run_page


def _digest(client, run) -> str:
    """The digest of the run's validation dataset, which the eval metrics are linked to."""
    (val,) = [d.dataset for d in run.inputs.dataset_inputs if d.tags[0].value == 'validation']
    return val.digest
