"""MLflow run contents (queried back from a real sqlite store), resume into the same run, metric
names, DVC's experiment tags, and the offline queue replayed into a store (test_tracking_server.py
runs the same against a real `mlflow server`)."""
import shutil
import socket
import time
from pathlib import Path

import mlflow
import pytest

from pipeline.tools.replay_tracking import main as replay_command
from sgformer.config import Tracking, load_params
from sgformer.tracking import (EXPERIMENT_KIND, NOTE_TAG, OFFLINE_PREFIX, SESSION_TAG, Tracker, dvc_tags,
                               epoch_metric_name, flatten, git_dirty, offline_root, replay, run_description)


@pytest.fixture
def store(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # mlflow writes artifacts under ./mlruns
    return f'sqlite:///{tmp_path}/mlflow.db'


def test_flatten():
    assert flatten({'a': {'b': 1, 'c': {'d': 'x'}}, 'e': 2}) == {'a.b': 1, 'a.c.d': 'x', 'e': 2}


def test_run_holds_params_metrics_artifacts_and_resumes(store, tmp_path):
    tracking = Tracking(tracking_uri=store, experiment='exp', system_metrics=False)
    tracker = Tracker(tracking, run_name='nano')
    params = {'train': {f'p{i}': i for i in range(150)}, 'model': 'sgformer_nano'}  # > one batch of 100
    tracker.log_params(params)
    tracker.set_tags({'world_size': '2'})
    for step in range(3):
        tracker.log_step({'loss': 1.0 / (step + 1)}, step=step)
    tracker.log_epoch({'epoch': 0, 'train_loss': 0.7, 'val_ema_top1': 0.5})
    (tmp_path / 'card.json').write_text('{}')
    tracker.log_artifact(tmp_path / 'card.json', 'model')
    tracker.end(status='KILLED')  # like a crash

    resumed = Tracker(tracking, run_name='ignored', run_id=tracker.run_id)
    resumed.log_step({'loss': 0.1}, step=3)
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
    assert run.data.metrics['val/ema_top1'] == 0.5 and run.data.metrics['train/epoch_loss'] == 0.7
    assert [a.path for a in client.list_artifacts(run.info.run_id, 'model')] == ['model/card.json']


def test_disabled_tracker_touches_nothing(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    tracker = Tracker(Tracking(tracking_uri=f'sqlite:///{tmp_path}/m.db'), run_name='r', enabled=False)
    tracker.log_params({'a': 1})
    tracker.log_step({'x': 1.0}, step=0)
    tracker.end()
    assert list(tmp_path.iterdir()) == []


def test_one_naming_scheme():
    assert [epoch_metric_name(k) for k in ('train_loss', 'epoch_time_s', 'lr', 'val_top1', 'val_ema_loss')] == \
        ['train/epoch_loss', 'train/epoch_time_s', 'train/epoch_lr', 'val/top1', 'val/ema_loss']


def test_git_dirty_of_this_checkout(tmp_path):
    assert git_dirty() in ('True', 'False')
    assert git_dirty(tmp_path) is None  # not a checkout


def test_dvc_tags_and_offline_root_follow_dvc(tmp_path, monkeypatch):
    for name in ('DVC_EXP_NAME', 'DVC_EXP_BASELINE_REV', 'DVC_STAGE', 'DVC_ROOT'):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.chdir(tmp_path)
    assert dvc_tags() == {}
    assert offline_root(Tracking()) == tmp_path / '.mlflow-offline'
    monkeypatch.setenv('DVC_EXP_NAME', 'pious-chin')
    monkeypatch.setenv('DVC_STAGE', 'train@nano')
    monkeypatch.setenv('DVC_ROOT', '/repo')  # `dvc exp run --temp` runs in a copy of the repository
    assert dvc_tags() == {'dvc.exp_name': 'pious-chin', 'dvc.stage': 'train@nano'}
    assert offline_root(Tracking()) == Path('/repo/.mlflow-offline')
    assert offline_root(Tracking(offline_dir=str(tmp_path / 'q'))) == tmp_path / 'q'


def test_a_queued_experiment_logs_into_the_repository_s_store(tmp_path, monkeypatch):
    """`dvc exp run --queue` runs a stage in a temporary copy, `.dvc/tmp/exps/<tmp>`, that DVC deletes
    afterwards, with DVC_ROOT naming the repository: the default `sqlite:///mlflow.db`, the new
    experiment's artifacts and the offline queue are the repository's, nothing lands in the copy."""
    repo, copy = tmp_path / 'repo', tmp_path / 'repo' / '.dvc' / 'tmp' / 'exps' / 'tmpabc'
    copy.mkdir(parents=True)
    monkeypatch.chdir(copy)
    monkeypatch.setenv('DVC_ROOT', str(repo))
    tracker = Tracker(Tracking(experiment='sweep', system_metrics=False), run_name='nano')
    (copy / 'card.json').write_text('{}')
    tracker.log_artifact(copy / 'card.json', 'model')
    tracker.end()
    assert sorted(p.name for p in copy.iterdir()) == ['card.json']
    client = mlflow.MlflowClient(tracking_uri=f'sqlite:///{repo}/mlflow.db')
    (run,) = client.search_runs([client.get_experiment_by_name('sweep').experiment_id])
    assert run.info.run_id == tracker.run_id and run.info.status == 'FINISHED'
    assert (repo / 'mlruns' / 'sweep' / run.info.run_id / 'artifacts' / 'model' / 'card.json').is_file()


def unreachable(tmp_path: Path) -> Tracking:
    """Tracking settings of a URI nothing listens at, queueing under `tmp_path/offline`."""
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        port = s.getsockname()[1]  # closed again: nothing listens there
    return Tracking(tracking_uri=f'http://127.0.0.1:{port}', experiment='exp', system_metrics=False,
                    offline_dir=str(tmp_path / 'offline'), timeout_s=2)


def test_no_server_queues_on_disk_and_replays_once(tmp_path, monkeypatch, capfd):
    """Nothing listens at the tracking URI: the run goes on with one warning line, its tracking
    waits in the queue, and replaying the queue (twice) logs it once, into one run."""
    monkeypatch.chdir(tmp_path)
    tracking = unreachable(tmp_path)
    started = time.monotonic()
    tracker = Tracker(tracking, run_name='nano')
    tracker.log_params({'train': {'lr': 0.001}})
    for step in range(1, 4):
        tracker.log_step({'loss': 1.0 / step}, step=step)
    tracker.log_epoch({'epoch': 0, 'train_loss': 0.7, 'val_ema_top1': 0.5})
    tracker.log_dict({'a': 1}, 'eval/per_class_top1.json')
    tracker.end()
    assert time.monotonic() - started < 15
    assert tracker.offline and tracker.run_id.startswith(OFFLINE_PREFIX)
    (warning,) = [line for line in capfd.readouterr().err.splitlines() if line.startswith('warning:')]
    (session,) = (tmp_path / 'offline').iterdir()
    assert str(session / 'queue.jsonl') in warning and 'Connection refused' in warning
    shutil.copytree(session, tmp_path / 'copy')

    (tmp_path / 'params.yaml').write_text(f"tracking: {{offline_dir: '{tmp_path / 'offline'}'}}\n"
                                          'variants:\n  nano: {model: sgformer_nano}\n')
    with pytest.raises(SystemExit) as still_down:  # the recorded URI: nothing listens yet
        replay_command(['--params', str(tmp_path / 'params.yaml')])
    assert still_down.value.code == 1 and session.is_dir()
    assert f'error: {session}' in capfd.readouterr().err

    store = f'sqlite:///{tmp_path}/mlflow.db'
    with pytest.raises(SystemExit) as replayed_ok:
        replay_command(['--params', str(tmp_path / 'params.yaml'), '--tracking-uri', store])
    assert replayed_ok.value.code == 0 and not (tmp_path / 'offline').exists()
    (line,) = capfd.readouterr().out.splitlines()
    replayed = (session.name, line.split()[-1])
    assert line == f'replayed {session.name} into run {replayed[1]}'
    shutil.copytree(tmp_path / 'copy', session)
    assert replay(tmp_path / 'offline', tracking_uri=store) == ([replayed], [])  # found by its session tag

    client = mlflow.MlflowClient(tracking_uri=store)
    (run,) = client.search_runs([client.get_experiment_by_name('exp').experiment_id])
    assert run.info.run_id == replayed[1] and run.info.status == 'FINISHED' and run.info.run_name == 'nano'
    assert run.data.params == {'train.lr': '0.001'} and run.data.tags[SESSION_TAG] == session.name
    assert [m.step for m in client.get_metric_history(run.info.run_id, 'train/loss')] == [1, 2, 3]
    assert [a.path for a in client.list_artifacts(run.info.run_id, 'eval')] == ['eval/per_class_top1.json']


def test_the_run_s_side_and_cost_are_train_metrics():
    assert [epoch_metric_name(k) for k in ('img_size', 'gpu_hours', 'mfu', 'data_wait', 'peak_mem_gib')] == \
        ['train/img_size', 'train/gpu_hours', 'train/mfu', 'train/data_wait', 'train/peak_mem_gib']


def test_a_run_s_description_says_what_its_variant_changes(tmp_path):
    (tmp_path / 'params.yaml').write_text("""
train: {epochs: 8, img_size: 64}
variants:
  nano: {model: sgformer_nano}
  nano_dp: {model: sgformer_nano, drop_path_rate: 0.1, epochs: 8, augment: {auto_augment: rand-m5-mstd0.5, hflip: 0.5}}
""")
    params = load_params(tmp_path / 'params.yaml')
    assert params.differences('nano') == {}
    assert params.differences('nano_dp') == {'drop_path_rate': 0.1, 'augment.auto_augment': 'rand-m5-mstd0.5'}
    assert [run_description(params.variants[v], params.differences(v)) for v in params.variants] == [
        'sgformer_nano at 64 px, 8 epochs; differs from train: nothing',
        'sgformer_nano at 64 px, 8 epochs; differs from train: drop_path_rate 0.1, '
        'augment.auto_augment rand-m5-mstd0.5']


def test_experiments_are_model_training_ones_and_a_chosen_kind_stays(store):
    tag, kind = EXPERIMENT_KIND
    client = mlflow.MlflowClient(tracking_uri=store)
    client.create_experiment('older')  # made before the tag
    client.create_experiment('chosen', tags={tag: 'genai_development'})
    for name in ('new', 'older', 'chosen', 'older'):
        tracker = Tracker(Tracking(tracking_uri=store, experiment=name, system_metrics=False), run_name='r')
        tracker.describe('sgformer_nano at 64 px')
        tracker.end()
    assert {name: client.get_experiment_by_name(name).tags.get(tag) for name in ('new', 'older', 'chosen')} == \
        {'new': kind, 'older': kind, 'chosen': 'genai_development'}
    assert client.get_run(tracker.run_id).data.tags[NOTE_TAG] == 'sgformer_nano at 64 px'


def test_linked_metrics_reach_the_run_s_model_once_even_replayed(store, tmp_path):
    """Metrics logged with `model=` go into the run and into its logged model of that name (looked
    up when they are sent: here by a replay), with their dataset; replaying again adds nothing."""
    from mlflow.entities import LoggedModelStatus
    train = Tracker(Tracking(tracking_uri=store, experiment='exp', system_metrics=False), run_name='nano')
    train.end()
    client = mlflow.MlflowClient(tracking_uri=store)
    experiment_id = client.get_experiment_by_name('exp').experiment_id
    model = client.create_logged_model(experiment_id, name='nano', source_run_id=train.run_id)
    client.finalize_logged_model(model.model_id, LoggedModelStatus.READY)

    evaluate = Tracker(unreachable(tmp_path), run_name='nano', run_id=train.run_id)  # the evaluate stage, offline
    val = dict(name='imagenet-val', digest='0123456789abcdef', source='/data', profile={})
    evaluate.log_metrics({'eval/top1': 0.75, 'eval/img_s': 120.0}, step=0, model='nano', dataset=val)
    evaluate.log_metrics({'eval/other': 1.0}, step=0, model='nano_dp')  # the run has no such model: the run's alone
    evaluate.end()
    (session,) = (tmp_path / 'offline').iterdir()
    shutil.copytree(session, tmp_path / 'copy')
    assert replay(tmp_path / 'offline', tracking_uri=store) == ([(session.name, train.run_id)], [])
    shutil.copytree(tmp_path / 'copy', session)
    assert replay(tmp_path / 'offline', tracking_uri=store) == ([(session.name, train.run_id)], [])

    linked = client.get_logged_model(model.model_id).metrics
    assert sorted((m.key, m.value, m.step, m.dataset_name, m.dataset_digest, m.run_id) for m in linked) == [
        ('eval/img_s', 120.0, 0, 'imagenet-val', '0123456789abcdef', train.run_id),
        ('eval/top1', 0.75, 0, 'imagenet-val', '0123456789abcdef', train.run_id)]
    assert [len(client.get_metric_history(train.run_id, k)) for k in ('eval/top1', 'eval/other')] == [1, 1]
