"""MLflow run contents (queried back from a real sqlite store), resume into the same run, DVC files."""
import csv
import json

import mlflow
import pytest

from sgformer.tracking import Tracker, flatten, git_tags, write_metrics, write_plot


@pytest.fixture
def store(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # mlflow writes artifacts under ./mlruns
    return f'sqlite:///{tmp_path}/mlflow.db'


def test_flatten():
    assert flatten({'a': {'b': 1, 'c': {'d': 'x'}}, 'e': 2}) == {'a.b': 1, 'a.c.d': 'x', 'e': 2}


def test_run_holds_params_metrics_artifacts_and_resumes(store, tmp_path):
    tracker = Tracker(enabled=True, tracking_uri=store, experiment='exp', run_name='nano')
    params = {'train': {f'p{i}': i for i in range(150)}, 'model': 'sgformer_nano'}  # > one batch of 100
    tracker.log_params(params)
    tracker.set_tags({'world_size': '2'})
    for step in range(3):
        tracker.log_metrics({'train/loss': 1.0 / (step + 1)}, step=step)
    (tmp_path / 'card.json').write_text('{}')
    tracker.log_artifact(tmp_path / 'card.json', 'model')
    tracker.end(status='KILLED')  # like a crash

    resumed = Tracker(enabled=True, tracking_uri=store, experiment='exp', run_name='ignored', run_id=tracker.run_id)
    resumed.log_metrics({'train/loss': 0.1}, step=3)
    resumed.end()

    client = mlflow.MlflowClient(tracking_uri=store)
    runs = client.search_runs([client.get_experiment_by_name('exp').experiment_id])
    assert len(runs) == 1
    run = runs[0]
    assert run.info.run_name == 'nano' and run.info.status == 'FINISHED'
    assert run.data.params['train.p149'] == '149' and run.data.params['model'] == 'sgformer_nano'
    assert run.data.tags['world_size'] == '2'
    history = client.get_metric_history(run.info.run_id, 'train/loss')
    assert [(m.step, m.value) for m in history] == [(0, 1.0), (1, 0.5), (2, pytest.approx(1 / 3)), (3, 0.1)]
    assert [a.path for a in client.list_artifacts(run.info.run_id, 'model')] == ['model/card.json']


def test_disabled_tracker_touches_nothing(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    tracker = Tracker(enabled=False, tracking_uri=f'sqlite:///{tmp_path}/m.db', experiment='e', run_name='r')
    tracker.log_params({'a': 1})
    tracker.log_metrics({'x': 1.0}, step=0)
    tracker.end()
    write_metrics(tmp_path / 'metrics.json', {'a': 1}, enabled=False)
    assert list(tmp_path.iterdir()) == []


def test_dvc_metrics_and_plots(tmp_path):
    write_metrics(tmp_path / 'metrics' / 'nano.json', {'top1': 0.9})
    write_plot(tmp_path / 'plots' / 'nano' / 'train.tsv', [{'epoch': 0, 'loss': 2.0}, {'epoch': 1, 'loss': 1.5}])
    assert json.loads((tmp_path / 'metrics' / 'nano.json').read_text()) == {'top1': 0.9}
    rows = list(csv.DictReader((tmp_path / 'plots' / 'nano' / 'train.tsv').open(), delimiter='\t'))
    assert rows == [{'epoch': '0', 'loss': '2.0'}, {'epoch': '1', 'loss': '1.5'}]


def test_git_tags_of_this_checkout():
    tags = git_tags()
    assert len(tags['git.commit']) == 40 and tags['git.dirty'] in ('True', 'False')
