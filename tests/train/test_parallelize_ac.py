"""`parallelize` with activation checkpointing gives the same gradients as without (one process)."""
import os
import subprocess
import sys

import pytest

SCRIPT = r'''
import torch, timm, torch.nn.functional as F
import sgformer.models  # noqa: F401  (registers the sgformer_* models with timm)
from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import CheckpointWrapper
from sgformer.train.distributed import init_distributed, destroy_distributed
from sgformer.config import Runtime
from sgformer.train.parallelize import parallelize
info = init_distributed("cpu")
x, y = torch.randn(2, 3, 64, 64), torch.tensor([0, 2])
grads = []
for ac in (False, True):
    torch.manual_seed(0)
    model = parallelize(timm.create_model("sgformer_nano", num_classes=3, drop_path_rate=0.1),
                        Runtime(activation_checkpointing=ac), device=info.device, shard=True)
    wrapped = sum(isinstance(b, CheckpointWrapper) for s in model.stages for b in s.blocks)
    assert wrapped == (7 if ac else 0), wrapped
    torch.manual_seed(1)
    F.cross_entropy(model(x), y).backward()
    grads.append({n: p.grad.full_tensor() for n, p in model.named_parameters()})
assert set(n.replace("._checkpoint_wrapped_module", "") for n in grads[1]) == set(grads[0])
for n1, g1 in grads[1].items():
    torch.testing.assert_close(g1, grads[0][n1.replace("._checkpoint_wrapped_module", "")], msg=n1)
destroy_distributed()
print("ok")
'''


@pytest.mark.timeout(300)
def test_activation_checkpointing_same_gradients():
    proc = subprocess.run([sys.executable, '-c', SCRIPT], capture_output=True, text=True, timeout=280,
                          env=dict(os.environ, PYTHONWARNINGS='ignore'))
    assert proc.returncode == 0 and proc.stdout.strip().endswith('ok'), proc.stderr[-3000:]
