"""The `compare` stage: the epochs of every variant of params.yaml in one table with a `variant`
column (the charts of dvc.yaml's top-level plots draw one line per variant from it)."""
import csv

import pytest

from pipeline.compare import combine, main

PARAMS = """
variants:
  a: {model: sgformer_nano}
  b: {model: sgformer_nano, drop_path_rate: 0.1}
"""


def write_table(path, rows):
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open('w', newline='') as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]), delimiter='\t')
        writer.writeheader()
        writer.writerows(rows)


def test_every_variant_of_params_yaml_is_gathered(tmp_path):
    params = tmp_path / 'params.yaml'
    params.write_text(PARAMS)
    epochs = tmp_path / 'plots' / 'train'
    write_table(epochs / 'a.tsv', [dict(epoch=0, train_loss=2.0, val_ema_top1=0.1), dict(epoch=1, train_loss=1.5,
                                                                                     val_ema_top1=0.3)])
    write_table(epochs / 'b.tsv', [dict(epoch=0, train_loss=2.1, val_ema_top1=0.2)])
    write_table(epochs / 'gone.tsv', [dict(epoch=0, train_loss=9.0, val_ema_top1=0.0)])  # a variant no longer listed
    out = tmp_path / 'plots' / 'curves.tsv'
    main(['--params', str(params), '--epochs', str(epochs), '--out', str(out)])
    rows = list(csv.DictReader(out.open(), delimiter='\t'))
    assert [(r['variant'], r['epoch'], r['val_ema_top1']) for r in rows] == [('a', '0', '0.1'), ('a', '1', '0.3'),
                                                                           ('b', '0', '0.2')]
    assert list(rows[0]) == ['variant', 'epoch', 'train_loss', 'val_ema_top1']

    params.write_text(PARAMS + '  c: {model: sgformer_tiny}\n')  # a variant added: it joins once it has trained
    with pytest.raises(SystemExit) as exit_info:
        main(['--params', str(params), '--epochs', str(epochs), '--out', str(out)])
    assert f"{epochs / 'c.tsv'}" in str(exit_info.value.code) and 'train@c' in str(exit_info.value.code)
    write_table(epochs / 'c.tsv', [dict(epoch=0, train_loss=2.2, val_ema_top1=0.4)])
    main(['--params', str(params), '--epochs', str(epochs), '--out', str(out)])
    assert [r['variant'] for r in csv.DictReader(out.open(), delimiter='\t')] == ['a', 'a', 'b', 'c']


def test_a_column_some_variant_lacks_is_left_empty():
    rows = combine({'gpu': [dict(epoch='0', mfu='0.4', gpu_hours='1.0')], 'cpu': [dict(epoch='0', gpu_hours='0.1')]})
    assert rows == [dict(variant='gpu', epoch='0', mfu='0.4', gpu_hours='1.0'),
                    dict(variant='cpu', epoch='0', mfu='', gpu_hours='0.1')]
    assert [list(r) for r in rows] == [['variant', 'epoch', 'mfu', 'gpu_hours']] * 2
