"""Trains sgformer_nano on fixed random data with the library's FSDP2 path; run under torchrun or alone.

Writes per-step global losses and final logits (raw and EMA) as JSON. With --crash-after K the
process dies like `kill -9` right after step K; a rerun resumes from the latest checkpoint.
"""
import argparse
import json
import os
from pathlib import Path

import timm
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

import sgformer  # noqa: F401
from sgformer.train.checkpoint import ModelOptimizerState, load_latest_checkpoint, save_checkpoint
from sgformer.train.distributed import destroy_distributed, init_distributed
from sgformer.train.optim import create_ema, create_optimizer, create_scheduler
from sgformer.train.parallelize import parallelize

GLOBAL_BATCH, STEPS = 8, 6


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument('--out', required=True)
    p.add_argument('--ckpt', required=True)
    p.add_argument('--save-every', type=int, default=2)
    p.add_argument('--crash-after', type=int)
    args = p.parse_args()
    torch.use_deterministic_algorithms(True)
    info = init_distributed('cpu')
    torch.manual_seed(0)
    model = timm.create_model('sgformer_nano', num_classes=4)
    ema = create_ema(model, decay=0.9, warmup=False)
    parallelize(model)
    parallelize(ema.module)
    optimizer = create_optimizer(model, lr=2e-3, weight_decay=0.05)
    scheduler = create_scheduler(optimizer, total_steps=STEPS, warmup_steps=2)
    state = {'train': ModelOptimizerState(model, optimizer, ema.module)}
    start = load_latest_checkpoint(args.ckpt, state) or 0

    data = torch.Generator().manual_seed(1)
    images = torch.randn(STEPS, GLOBAL_BATCH, 3, 64, 64, generator=data)
    labels = torch.randint(0, 4, (STEPS, GLOBAL_BATCH), generator=data)
    per_rank = GLOBAL_BATCH // info.world_size
    local = slice(info.rank * per_rank, (info.rank + 1) * per_rank)
    losses = {}
    for step in range(start, STEPS):
        model.train()
        loss = F.cross_entropy(model(images[step, local]), labels[step, local])
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        ema.update(model, step + 1)
        scheduler.step_update(step + 1)
        global_loss = loss.detach().clone()
        dist.all_reduce(global_loss)
        losses[step] = global_loss.item() / info.world_size
        if (step + 1) % args.save_every == 0:
            save_checkpoint(args.ckpt, step + 1, state, keep=2)
        if args.crash_after == step + 1:
            os._exit(9)

    options = StateDictOptions(full_state_dict=True, cpu_offload=True)
    full, full_ema = get_model_state_dict(model, options=options), get_model_state_dict(ema.module, options=options)
    if info.is_main:
        probe = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(2))
        plain = timm.create_model('sgformer_nano', num_classes=4).eval()
        result = {'losses': losses, 'lr': optimizer.param_groups[0]['lr'], 'start': start}
        with torch.no_grad():
            plain.load_state_dict(full)
            result['logits'] = plain(probe).tolist()
            plain.load_state_dict(full_ema)
            result['ema_logits'] = plain(probe).tolist()
        Path(args.out).write_text(json.dumps(result))
    destroy_distributed()


if __name__ == '__main__':
    main()
