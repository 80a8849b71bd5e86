"""`runtime.compile`: the trainer's model and EMA compile once per shape and mode; later epochs,
train/eval switches and repeated resolutions compile nothing new (counted with a counting
backend, so no inductor codegen runs on CPU)."""
import pytest
import torch
from torch._dynamo.testing import CompileCounter

import sgformer.models  # noqa: F401  (registers the sgformer_* models with timm)
from sgformer.config import Checkpoint, Runtime, resolve_variant
from sgformer.train.distributed import destroy_distributed, init_distributed
from sgformer.train.trainer import Trainer


def batches(n: int, size: int, last: int):
    g = torch.Generator().manual_seed(0)
    sizes = [size] * (n - 1) + [last]
    return [(torch.randint(0, 256, (b, 3, 64, 64), dtype=torch.uint8, generator=g), torch.arange(b) % 3) for b in sizes]


@pytest.mark.timeout(600)
def test_compiles_once_per_shape_and_mode(tmp_path):
    torch._dynamo.reset()
    counter = CompileCounter()
    info = init_distributed('cpu')
    try:
        variant = resolve_variant('sgformer_nano', num_classes=3, img_size=64, batch_size=4, epochs=2)
        trainer = Trainer(variant, runtime=Runtime(compile=True), checkpoint=Checkpoint(), dist_info=info,
                          steps_per_epoch=2, checkpoint_dir=tmp_path, compile_backend=counter)
        train, val = batches(2, 4, 4), batches(2, 4, 3)  # the last val batch is smaller (drop_last is off)
        counts = []
        for _ in range(2):
            trainer._train_epoch(train, tracker=None, log_every=1)
            trainer.evaluate(trainer.model, val)
            trainer.evaluate(trainer.ema.module, val)
            counts.append(counter.frame_count)
        assert counts[0] > 0 and counts[1] == counts[0], counts  # epoch 2 reuses every graph of epoch 1
    finally:
        destroy_distributed()
        torch._dynamo.reset()
