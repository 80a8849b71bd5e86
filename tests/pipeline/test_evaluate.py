"""`import_official` + the `evaluate` stage: an official-format checkpoint built from the fixture
gives the official logits through the export, and the stage writes the headline metrics, the
report of every number, DVC plots, pictures and the same numbers into MLflow."""
import argparse
import csv
import json
from pathlib import Path

import mlflow
import pytest
import torch

from pipeline.convert import main as convert
from pipeline.evaluate import main as evaluate
from pipeline.tools.import_official import import_official
from sgformer.config import Sample
from sgformer.datasets.sample import write_sample
from sgformer.eval.evaluation import HEADLINE
from sgformer.export import load_export

FIXTURES = Path(__file__).resolve().parents[1] / 'fixtures'
PARAMS = """
data: {{source: {src}, betons: {betons}}}
convert: {{max_resolution: 96, write_mode: jpg, max_bad_fraction: 0.3}}
loader: {{num_workers: 1}}
tracking: {{tracking_uri: '{uri}', experiment: eval-test, system_metrics: false}}
eval: {{batch_size: 4, speed_batch_size: 2, speed_steps: 2, resolutions: [256], num_pictures: 3}}
variants:
  nano: {{model: sgformer_nano}}
"""


@pytest.fixture(scope='module')
def official_export(tmp_path_factory) -> tuple[Path, dict]:
    """The fixture's official weights saved as an official training checkpoint, then imported."""
    fixture = torch.load(FIXTURES / 'official_sgformer_tiny.pt', weights_only=True)
    tmp = tmp_path_factory.mktemp('official')
    raw = {k: v * 0.5 if v.is_floating_point() else v for k, v in fixture['state_dict'].items()}
    torch.save({'state_dict': {f'module.{k}': v for k, v in raw.items()}, 'state_dict_ema': fixture['state_dict'],
                'epoch': 299, 'args': argparse.Namespace(model='sgformer_tiny')}, tmp / 'checkpoint.pth')
    import_official(tmp / 'checkpoint.pth', 'sgformer_nano', tmp / 'export', img_size=224, num_classes=10)
    return tmp / 'export', fixture


def test_imported_ema_gives_the_official_logits(official_export):
    export, fixture = official_export
    model, card = load_export(export, 'ema')
    assert card['model'] == 'sgformer_nano' and card['weights'] == {'ema': 'model.safetensors', 'raw': 'raw.safetensors'}
    with torch.no_grad():
        logits = model(fixture['input'])
    torch.testing.assert_close(logits, fixture['logits'], atol=1e-4, rtol=0)
    plain, _ = load_export(export, 'raw')  # state_dict (here: halved weights), not the EMA
    with torch.no_grad():
        assert not torch.allclose(plain(fixture['input']), logits, atol=1e-3)


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_evaluate_stage_on_an_imported_checkpoint(tmp_path, official_export):
    export, fixture = official_export
    write_sample(tmp_path / 'src', Sample(num_classes=10, train_per_class=1, val_per_class=2))
    uri = f'sqlite:///{tmp_path}/mlflow.db'
    params = tmp_path / 'params.yaml'
    params.write_text(PARAMS.format(src=tmp_path / 'src', betons=tmp_path / 'betons', uri=uri))
    convert(['--params', str(params), '--report', str(tmp_path / 'bad.json')])
    evaluate(['--params', str(params), '--variant', 'official', '--model-dir', str(export),
              '--report', str(tmp_path / 'bad.json'), '--metrics', str(tmp_path / 'metrics'),
              '--details', str(tmp_path / 'reports'), '--plots', str(tmp_path / 'plots')])

    metrics = json.loads((tmp_path / 'reports' / 'eval_official.json').read_text())
    headline = json.loads((tmp_path / 'metrics' / 'official.json').read_text())
    assert list(headline) == list(HEADLINE) and headline['gpu_hours'] is None  # an import says nothing of training
    assert headline == {k: metrics.get(k) for k in HEADLINE}
    val_images = 10 * 2 + 1  # + the grayscale odd file, which converts to RGB
    assert metrics['images'] == val_images and metrics['img_size'] == 224
    official_params = sum(v.numel() for k, v in fixture['state_dict'].items() if v.is_floating_point())
    assert metrics['params_m'] == pytest.approx(official_params / 1e6) and 0 < metrics['gmacs'] < 1
    assert {'top1', 'top5', 'loss', 'img_s', 'latency_ms', 'top1_256'} <= set(metrics)
    assert (metrics['speed_device'], metrics['speed_dtype']) == ('cpu', 'float32')
    rows = list(csv.DictReader((tmp_path / 'plots' / 'official' / 'confusion.csv').open()))
    assert len(rows) == val_images
    assert metrics['top1'] == pytest.approx(sum(r['actual'] == r['predicted'] for r in rows) / val_images)
    pictures = sorted(p.name for p in (tmp_path / 'plots' / 'official' / 'images').iterdir())
    assert pictures == ['confusion.png'] + [f'significance_stage{i}.png' for i in range(3)]

    client = mlflow.MlflowClient(tracking_uri=uri)
    (run,) = client.search_runs([client.get_experiment_by_name('eval-test').experiment_id])
    assert run.data.metrics['eval/top1'] == pytest.approx(metrics['top1'])
    assert run.data.tags['stage'] == 'evaluate'
    logged = {a.path for a in client.list_artifacts(run.info.run_id, 'eval')}
    assert {'eval/confusion.png', 'eval/significance_stage0.png', 'eval/per_class_top1.json'} <= logged


def test_evaluate_refuses_an_export_of_other_classes(tmp_path, official_export):
    export, _ = official_export
    write_sample(tmp_path / 'src', Sample(num_classes=3, train_per_class=2, val_per_class=1, bad_files=False))
    params = tmp_path / 'params.yaml'
    params.write_text(PARAMS.format(src=tmp_path / 'src', betons=tmp_path / 'betons', uri=f'sqlite:///{tmp_path}/m.db'))
    convert(['--params', str(params), '--report', str(tmp_path / 'bad.json')])
    with pytest.raises(SystemExit) as exit_info:
        evaluate(['--params', str(params), '--variant', 'official', '--model-dir', str(export),
                  '--metrics', str(tmp_path / 'metrics'), '--details', str(tmp_path / 'reports'),
                  '--plots', str(tmp_path / 'plots')])
    assert 'the export has 10 classes but' in str(exit_info.value.code) and 'has 3' in str(exit_info.value.code)
    assert not (tmp_path / 'metrics').exists() and not (tmp_path / 'reports').exists()
