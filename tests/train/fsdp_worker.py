"""Runs `Trainer.train_step` on fixed random uint8 batches; under torchrun (FSDP2) or alone (one
plain process). Writes per-step global losses and final logits (raw and EMA) as JSON. With
--crash-after K the process dies like `kill -9` right after step K; a rerun resumes from the latest
checkpoint.
"""
import argparse
import json
import os
from pathlib import Path

import timm
import torch

import sgformer.models  # noqa: F401  (registers the sgformer_* models with timm)
from sgformer.config import Checkpoint, Runtime, resolve_variant
from sgformer.train.checkpoint import save_checkpoint
from sgformer.train.distributed import destroy_distributed, init_distributed
from sgformer.train.trainer import Trainer

GLOBAL_BATCH, STEPS = 8, 6
VARIANT = resolve_variant('sgformer_nano', num_classes=4, img_size=64, epochs=1, batch_size=GLOBAL_BATCH, lr=2e-3,
                          warmup_epochs=2 / STEPS, min_lr=1e-5, ema_decay=0.9, ema_warmup=False, grad_clip=0.5)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument('--out', required=True)
    p.add_argument('--ckpt', required=True)
    p.add_argument('--save-every', type=int, default=2)
    p.add_argument('--crash-after', type=int)
    args = p.parse_args()
    torch.use_deterministic_algorithms(True)
    info = init_distributed('cpu')
    trainer = Trainer(VARIANT, runtime=Runtime(), checkpoint=Checkpoint(), dist_info=info, steps_per_epoch=STEPS,
                      checkpoint_dir=args.ckpt)
    trainer.resume()
    start = trainer.progress.step

    data = torch.Generator().manual_seed(1)
    images = torch.randint(0, 256, (STEPS, GLOBAL_BATCH, 3, 64, 64), dtype=torch.uint8, generator=data)
    labels = torch.randint(0, 4, (STEPS, GLOBAL_BATCH), generator=data)
    per_rank = GLOBAL_BATCH // info.world_size
    local = slice(info.rank * per_rank, (info.rank + 1) * per_rank)
    losses = {}
    trainer.model.train()
    for step in range(start, STEPS):
        before = trainer.stats.values[0].item()
        trainer.train_step(images[step, local], labels[step, local])
        losses[step] = trainer.stats.values[0].item() - before  # the step's global mean loss
        if (step + 1) % args.save_every == 0:
            save_checkpoint(args.ckpt, step + 1, trainer.checkpoint_state, keep=2)
        if args.crash_after == step + 1:
            os._exit(9)

    full, full_ema = trainer.full_state_dicts()
    if info.is_main:
        probe = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(2))
        plain = timm.create_model('sgformer_nano', **VARIANT.model_kwargs()).eval()
        result = {'losses': losses, 'lr': trainer.optimizer.param_groups[0]['lr'], 'start': start,
                  'sharded': trainer.sharded}
        with torch.no_grad():
            plain.load_state_dict(full)
            result['logits'] = plain(probe).tolist()
            plain.load_state_dict(full_ema)
            result['ema_logits'] = plain(probe).tolist()
        Path(args.out).write_text(json.dumps(result))
    destroy_distributed()


if __name__ == '__main__':
    main()
