"""DCP checkpoints: newest k kept, incomplete ones ignored, state restored."""
import torch

from sgformer.train.checkpoint import checkpoint_steps, load_latest_checkpoint, save_checkpoint


def test_keep_latest_and_ignore_incomplete(tmp_path):
    for step in (1, 2, 3):
        save_checkpoint(tmp_path, step, {'w': torch.full((3,), float(step))}, keep=2)
    assert checkpoint_steps(tmp_path) == [2, 3]
    (tmp_path / 'step-9.tmp').mkdir()  # a save that died half-way
    state = {'w': torch.zeros(3)}
    assert load_latest_checkpoint(tmp_path, state) == 3
    assert torch.equal(state['w'], torch.full((3,), 3.0))


def test_no_checkpoint(tmp_path):
    assert load_latest_checkpoint(tmp_path / 'none', {'w': torch.zeros(1)}) is None


def test_prune_runs_keeps_the_current_run_and_removes_finished_ones_first(tmp_path, caplog):
    import os

    from sgformer.train.checkpoint import FINISHED, prune_runs
    for age, (name, finished) in enumerate([('old-done', True), ('old-open', False), ('new-done', True),
                                             ('new-open', False), ('current', False)]):
        run = tmp_path / name
        (run / 'step-1').mkdir(parents=True)
        if finished:
            (run / FINISHED).write_text('{}')
        for p in (run, run / 'step-1', *run.glob(FINISHED)):
            os.utime(p, (1000 + age, 1000 + age))
    with caplog.at_level('WARNING'):
        removed = prune_runs(tmp_path, 'current', keep_runs=2)
    assert [p.name for p in removed] == ['old-done', 'new-done']
    assert sorted(p.name for p in tmp_path.iterdir()) == ['current', 'new-open', 'old-open']
    assert 'old-done' in caplog.text and 'keep_runs=2' in caplog.text
    assert prune_runs(tmp_path, 'current', keep_runs=2) == []  # within the bound: nothing goes


SHARED_SCRIPT = r'''
import pathlib, sys, torch.distributed as dist
from sgformer.train.checkpoint import CheckpointFolderError, check_shared_folder
dist.init_process_group('gloo')
root, rank = sys.argv[1], dist.get_rank()
folder = root if sys.argv[2] == 'shared' else f'{root}/node{rank}'
try:
    check_shared_folder(folder)
    outcome = 'shared'
except CheckpointFolderError as e:
    outcome = f'error: {e}'
# one file per rank: two ranks printing to one pipe can interleave their lines
pathlib.Path(sys.argv[3], f'rank{rank}.txt').write_text(outcome)
dist.destroy_process_group()
'''


def test_a_folder_not_shared_by_every_rank_is_refused_up_front(tmp_path):
    import os
    import subprocess
    import sys
    script = tmp_path / 'check.py'
    script.write_text(SHARED_SCRIPT)
    outputs = {}
    for mode in ('shared', 'local'):
        results = tmp_path / f'{mode}-results'
        results.mkdir()
        proc = subprocess.run([sys.executable, '-m', 'torch.distributed.run', '--standalone', '--nproc_per_node=2',
                               str(script), str(tmp_path / mode), mode, str(results)], capture_output=True, text=True,
                              timeout=120, env=dict(os.environ, PYTHONWARNINGS='ignore'))
        assert proc.returncode == 0, proc.stderr[-2000:]
        outputs[mode] = [(results / f'rank{rank}.txt').read_text() for rank in (0, 1)]
    assert outputs['shared'] == ['shared', 'shared']
    assert all('is not the same folder on every rank' in line for line in outputs['local'])
    assert all('ranks [1]' in line for line in outputs['local'])
