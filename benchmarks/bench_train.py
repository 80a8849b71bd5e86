"""Training throughput and per-rank memory of the production step (`Trainer.train_step`) at 1 vs 2
ranks (CPU: gloo; CUDA: NCCL).

Launches `torchrun --nproc_per_node=N` on itself for each N and runs the trainer's own step on
random uint8 batches: augmentation, autocast, NaN guard, gradient clipping, fused AdamW, EMA and
schedule, as the train stage runs them (FSDP2 when N > 1). Reports images/s (all ranks) and the bytes
of parameters plus optimizer state held by each rank (sharding should halve them). Prints a
markdown table, writes JSON.

    python benchmarks/bench_train.py                               # sgformer_tiny, 64 px, CPU
    python benchmarks/bench_train.py --model sgformer_s --img-size 224 --batch 128 --nprocs 1 --device cuda
    python benchmarks/bench_train.py --model sgformer_nano --batch 64 --nprocs 1 --augment official
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from sgformer.eval.metrics import timed
from sgformer.io import write_json_atomic

from common import create_trainer, markdown_table, repeated, round_seconds, uint8_batch

AUGMENT = {'demo': {}, 'official': dict(auto_augment='rand-m9-mstd0.5-inc1', reprob=0.25, mixup=0.8, cutmix=1.0)}


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--model', default='sgformer_tiny')
    p.add_argument('--img-size', type=int, default=64)
    p.add_argument('--batch', type=int, default=16, help='global batch (split over ranks)')
    p.add_argument('--steps', type=int, default=5)
    p.add_argument('--warmup', type=int, default=2)
    p.add_argument('--nprocs', type=int, nargs='+', default=[1, 2])
    p.add_argument('--device', default='cpu', choices=['cpu', 'cuda'])
    p.add_argument('--augment', default='demo', choices=sorted(AUGMENT), help="the demo's light augmentation or the official one")
    p.add_argument('--compile', action='store_true', help='runtime.compile: true')
    p.add_argument('--out', type=Path, default=Path(__file__).parent / 'results' / 'bench_train.json')
    p.add_argument('--worker', action='store_true', help=argparse.SUPPRESS)
    return p.parse_args(argv)


def _local_bytes(tensors) -> int:
    total = 0
    for t in tensors:
        local = t.to_local() if hasattr(t, 'to_local') else t
        total += local.numel() * local.element_size()
    return total


def run_worker(args) -> None:
    import torch
    import torch.distributed as dist

    from sgformer.train.distributed import destroy_distributed, init_distributed

    info = init_distributed(args.device)
    with tempfile.TemporaryDirectory() as checkpoints:
        trainer = create_trainer(args.model, device=args.device, compile=args.compile, dist_info=info,
                                 steps_per_epoch=args.warmup + args.steps, checkpoint_dir=checkpoints,
                                 img_size=args.img_size, num_classes=1000, batch_size=args.batch,
                                 augment=AUGMENT[args.augment])
        per_rank = args.batch // info.world_size
        images, labels = uint8_batch(per_rank, args.img_size, 1000, info.device)
        trainer.model.train()
        step = lambda: trainer.train_step(images, labels)  # noqa: E731

        timed(repeated(step, args.warmup), info.device)
        dist.barrier()
        seconds = round_seconds(step, args.steps, info.device)  # the step is asynchronous: one sync
        state = [v for s in trainer.optimizer.state.values() for v in s.values() if torch.is_tensor(v) and v.dim() > 0]
        row = torch.tensor([per_rank / seconds, _local_bytes(trainer.model.parameters()), _local_bytes(state)],
                           dtype=torch.float64)
    rows = [torch.zeros_like(row) for _ in range(info.world_size)]
    dist.all_gather(rows, row)
    if info.is_main:
        per_rank_rows = [r.tolist() for r in rows]
        print(json.dumps(dict(
            world_size=info.world_size, sharded=trainer.sharded,
            img_s_total=sum(r[0] for r in per_rank_rows),
            param_mib_per_rank=max(r[1] for r in per_rank_rows) / 2**20,
            optim_mib_per_rank=max(r[2] for r in per_rank_rows) / 2**20,
        )))
    destroy_distributed()


def main(argv=None) -> None:
    args = parse_args(argv)
    if args.worker:
        run_worker(args)
        return
    passthrough = [a for a in (argv if argv is not None else sys.argv[1:]) if a != '--worker']
    rows = []
    for n in args.nprocs:
        cmd = [sys.executable, '-m', 'torch.distributed.run', '--standalone', f'--nproc_per_node={n}', __file__,
               '--worker', *passthrough]
        env = dict(os.environ, PYTHONWARNINGS='ignore')
        env.setdefault('OMP_NUM_THREADS', str(max(1, (os.cpu_count() or 1) // n)))
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
        if proc.returncode:
            sys.exit(f'{n} ranks failed:\n{proc.stderr[-3000:]}')
        rows.append(json.loads(proc.stdout.strip().splitlines()[-1]))
    base = rows[0]
    print(f'model={args.model} img={args.img_size} global_batch={args.batch} device={args.device} '
          f'augment={args.augment} compile={args.compile} steps={args.steps} (Trainer.train_step)')
    header = ('ranks', 'FSDP2', 'img/s total', 'params MiB / rank', 'optimizer MiB / rank', 'memory × 1 rank')
    base_mib = base['param_mib_per_rank'] + base['optim_mib_per_rank']
    print(markdown_table(header, [
        (r['world_size'], r['sharded'], f"{r['img_s_total']:.1f}", f"{r['param_mib_per_rank']:.2f}",
         f"{r['optim_mib_per_rank']:.2f}", f"{(r['param_mib_per_rank'] + r['optim_mib_per_rank']) / base_mib:.2f}")
        for r in rows]))
    write_json_atomic(args.out, dict(config={k: str(v) for k, v in vars(args).items()}, results=rows))


if __name__ == '__main__':
    main()
