"""FSDP2 training throughput and per-rank memory at 1 vs 2 ranks (CPU: gloo; CUDA: NCCL).

Launches `torchrun --nproc_per_node=N` on itself for each N, trains on random data with the
library's `parallelize` + AdamW, and reports images/s per rank and the bytes of parameters plus
optimizer state held by each rank (sharding should halve them). Prints a markdown table, writes JSON.

    python benchmarks/bench_train.py                               # sgformer_tiny, 64 px, CPU
    python benchmarks/bench_train.py --model sgformer_s --img-size 224 --batch 128 --nprocs 1 --device cuda
    python benchmarks/bench_train.py --model sgformer_nano --batch 64 --nprocs 1 --no-shard   # what the trainer runs on 1 CPU rank
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--model', default='sgformer_tiny')
    p.add_argument('--img-size', type=int, default=64)
    p.add_argument('--batch', type=int, default=16, help='global batch (split over ranks)')
    p.add_argument('--steps', type=int, default=5)
    p.add_argument('--warmup', type=int, default=2)
    p.add_argument('--nprocs', type=int, nargs='+', default=[1, 2])
    p.add_argument('--device', default='cpu', choices=['cpu', 'cuda'])
    p.add_argument('--param-dtype', default='float32', choices=['float32', 'bfloat16'])
    p.add_argument('--no-shard', action='store_true', help='skip fully_shard (the trainer does on one float32 rank)')
    p.add_argument('--optimizer-loop', action='store_true',
                   help="torch's per-parameter AdamW instead of the library's fused one (the baseline)")
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
    import timm
    import torch
    import torch.distributed as dist
    import torch.nn.functional as F

    import sgformer  # noqa: F401
    from sgformer.train.distributed import destroy_distributed, init_distributed
    from sgformer.train.optim import create_optimizer
    from sgformer.train.parallelize import parallelize

    info = init_distributed(args.device)
    torch.manual_seed(0)
    model = timm.create_model(args.model, img_size=args.img_size)
    parallelize(model, param_dtype=args.param_dtype, shard=not args.no_shard)
    if args.optimizer_loop:
        from timm.optim import create_optimizer_v2
        optimizer = create_optimizer_v2(model, opt='adamw', lr=1e-4, weight_decay=0.05, foreach=False)
    else:
        optimizer = create_optimizer(model, lr=1e-4, weight_decay=0.05)
    per_rank = args.batch // info.world_size
    x = torch.randn(per_rank, 3, args.img_size, args.img_size, device=info.device)
    y = torch.randint(0, 1000, (per_rank,), device=info.device)

    optimizer_seconds = []

    def step():
        F.cross_entropy(model(x), y).backward()
        started = time.perf_counter()
        optimizer.step()
        if info.device.type == 'cuda':
            torch.cuda.synchronize()
        optimizer_seconds.append(time.perf_counter() - started)
        optimizer.zero_grad(set_to_none=True)

    for _ in range(args.warmup):
        step()
    if info.device.type == 'cuda':
        torch.cuda.synchronize()
    dist.barrier()
    start = time.perf_counter()
    for _ in range(args.steps):
        step()
    if info.device.type == 'cuda':
        torch.cuda.synchronize()
    seconds = (time.perf_counter() - start) / args.steps
    optimizer_ms = 1e3 * statistics.median(optimizer_seconds[-args.steps:])
    state = [v for s in optimizer.state.values() for v in s.values() if torch.is_tensor(v) and v.dim() > 0]
    row = torch.tensor([per_rank / seconds, _local_bytes(model.parameters()), _local_bytes(state), optimizer_ms],
                       dtype=torch.float64)
    rows = [torch.zeros_like(row) for _ in range(info.world_size)]
    dist.all_gather(rows, row)
    if info.is_main:
        per_rank_rows = [r.tolist() for r in rows]
        print(json.dumps(dict(
            world_size=info.world_size,
            img_s_per_rank=sum(r[0] for r in per_rank_rows) / info.world_size,
            img_s_total=sum(r[0] for r in per_rank_rows),
            param_mib_per_rank=max(r[1] for r in per_rank_rows) / 2**20,
            optim_mib_per_rank=max(r[2] for r in per_rank_rows) / 2**20,
            optimizer_step_ms=max(r[3] for r in per_rank_rows),
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
          f'param_dtype={args.param_dtype} steps={args.steps} shard={not args.no_shard} '
          f"optimizer={'per-parameter loop' if args.optimizer_loop else 'fused'}")
    print('| ranks | img/s per rank | img/s total | params MiB / rank | optimizer MiB / rank | memory × 1 rank | optimizer step ms |')
    print('|---|---|---|---|---|---|---|')
    for r in rows:
        ratio = (r['param_mib_per_rank'] + r['optim_mib_per_rank']) / (base['param_mib_per_rank'] + base['optim_mib_per_rank'])
        print(f"| {r['world_size']} | {r['img_s_per_rank']:.1f} | {r['img_s_total']:.1f} | {r['param_mib_per_rank']:.2f} | "
              f"{r['optim_mib_per_rank']:.2f} | {ratio:.2f} | {r['optimizer_step_ms']:.1f} |")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.out.with_suffix('.tmp')
    tmp.write_text(json.dumps(dict(config={k: str(v) for k, v in vars(args).items()}, results=rows), indent=2))
    tmp.replace(args.out)


if __name__ == '__main__':
    main()
