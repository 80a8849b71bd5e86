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
