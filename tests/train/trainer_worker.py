"""Runs `Trainer` on a small learnable synthetic set; under torchrun or alone. Writes JSON on rank 0.

--crash-at E:S kills the process like `kill -9` when batch S of epoch E is requested (mid-epoch);
--nan-steps A,B,... makes the loss NaN at those global steps; --grad-accum N splits each rank's batch
into N micro-steps; --weights-out F saves the final (unsharded) weights there.
"""
import argparse
import json
import os
from pathlib import Path

import torch
from timm.loss import SoftTargetCrossEntropy

import sgformer.models  # noqa: F401  (registers the sgformer_* models with timm)
from sgformer.config import Checkpoint, Runtime, resolve_variant
from sgformer.train.distributed import destroy_distributed, init_distributed
from sgformer.train.trainer import NonFiniteLossError, Trainer

NUM, CLASSES, GLOBAL_BATCH = 48, 3, 8


def make_data(seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(NUM) % CLASSES
    images = 128 + torch.randn(NUM, 3, 64, 64, generator=g) * 30
    images[:, 0] += 50 * (labels.float() - 1)[:, None, None]  # the class is in the red channel's mean
    return images.clamp(0, 255).to(torch.uint8), labels


class Loader:
    """Rank-sharded, epoch-seeded shuffling loader with FFCV's `next_epoch` contract."""

    def __init__(self, images, labels, rank, world, shuffle, crash_at=None):
        self.images, self.labels, self.rank, self.world, self.shuffle = images, labels, rank, world, shuffle
        self.next_epoch, self.crash_at = 0, crash_at

    def __len__(self):
        return len(self.labels) // GLOBAL_BATCH

    def __iter__(self):
        epoch, self.next_epoch = self.next_epoch, self.next_epoch + 1
        order = torch.randperm(len(self.labels), generator=torch.Generator().manual_seed(epoch)) if self.shuffle \
            else torch.arange(len(self.labels))
        per_rank = GLOBAL_BATCH // self.world
        for i in range(len(self)):
            if self.crash_at == (epoch, i):
                os._exit(9)
            idx = order[i * GLOBAL_BATCH:(i + 1) * GLOBAL_BATCH][self.rank * per_rank:(self.rank + 1) * per_rank]
            yield self.images[idx], self.labels[idx]


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument('--out', required=True)
    p.add_argument('--ckpt', required=True)
    p.add_argument('--epochs', type=int, default=3)
    p.add_argument('--crash-at')
    p.add_argument('--nan-steps', default='')
    p.add_argument('--max-nonfinite', type=int, default=3)
    p.add_argument('--grad-accum', type=int, default=1)
    p.add_argument('--drop-path', type=float, default=0.1)
    p.add_argument('--weights-out')
    args = p.parse_args()
    torch.use_deterministic_algorithms(True)
    info = init_distributed('cpu')
    variant = resolve_variant('sgformer_nano', num_classes=CLASSES, img_size=64, drop_path_rate=args.drop_path,
                              epochs=args.epochs, grad_accum_steps=args.grad_accum,
                              batch_size=GLOBAL_BATCH, lr=2e-3, weight_decay=0.05, warmup_epochs=1, warmup_lr=1e-5,
                              min_lr=1e-5, ema_decay=0.9, ema_warmup=True, grad_clip=5.0,
                              max_nonfinite_steps=args.max_nonfinite, seed=7)
    crash_at = tuple(int(v) for v in args.crash_at.split(':')) if args.crash_at else None
    train = Loader(*make_data(0), info.rank, info.world_size, shuffle=True, crash_at=crash_at)
    val = Loader(*make_data(1), info.rank, info.world_size, shuffle=False)
    nan_steps = {int(s) for s in args.nan_steps.split(',') if s}
    soft_target_loss = SoftTargetCrossEntropy()

    def loss_fn(logits, targets):
        loss = soft_target_loss(logits, targets)
        return loss * float('nan') if trainer.progress.step in nan_steps else loss

    trainer = Trainer(variant, runtime=Runtime(), checkpoint=Checkpoint(), dist_info=info, steps_per_epoch=len(train),
                      checkpoint_dir=args.ckpt, loss_fn=loss_fn)
    resumed = trainer.resume()
    result = dict(resumed=resumed)
    try:
        result['history'] = trainer.fit(train, val, log_every=2)
    except NonFiniteLossError as e:
        result['error'] = str(e)
    result['skipped'] = trainer.progress.skipped_steps
    result['step'] = trainer.progress.step
    model_sd, ema_sd = trainer.full_state_dicts()
    if info.is_main:
        result['weights_sum'] = float(sum(v.double().sum() for v in model_sd.values()))
        result['ema_weights_sum'] = float(sum(v.double().sum() for v in ema_sd.values()))
        if args.weights_out:
            torch.save(dict(model=model_sd, ema=ema_sd), args.weights_out)
        Path(args.out).write_text(json.dumps(result))
    destroy_distributed()


if __name__ == '__main__':
    main()
