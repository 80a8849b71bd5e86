"""DVC stage `train`: trains one variant (FSDP2 over several ranks). Params read: data, loader,
train, augment, runtime, checkpoint, tracking, eval.crop_pct, variants.<name>.

    python -m pipeline.train --variant nano                        # world_size from params.yaml
    torchrun --standalone --nproc_per_node=8 -m pipeline.train --variant s
    torchrun --nnodes=2 --node_rank=R --nproc_per_node=8 --rdzv-endpoint=HOST:PORT -m pipeline.train --variant b

Run without torchrun and with `world_size > 1`, it relaunches itself under torchrun on this node.
A rerun after a crash resumes from the newest checkpoint and continues the same MLflow run.
"""
import argparse
import os
import subprocess
import sys
from pathlib import Path

from sgformer.cli import exit_on_user_errors, load_params_or_exit, variant_or_exit
from sgformer.config import ConfigError


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--variant', required=True, help='a key of `variants` in params.yaml')
    p.add_argument('--params', default='params.yaml')
    p.add_argument('--report', default='reports/convert.json', help="the convert stage's report (skipped images)")
    p.add_argument('--models', default='models', help='exports go to <models>/<variant>/')
    p.add_argument('--checkpoints', default='checkpoints', help='DCP checkpoints in <checkpoints>/<variant>/')
    p.add_argument('--metrics', default='metrics', help='final metrics in <metrics>/<variant>.json')
    p.add_argument('--plots', default='plots', help='per-epoch curves in <plots>/<variant>/')
    return p.parse_args(argv)


def _relaunch_under_torchrun(world_size: int, argv: list[str]) -> int:
    cmd = [sys.executable, '-m', 'torch.distributed.run', '--standalone', f'--nproc_per_node={world_size}',
           '-m', 'pipeline.train', *argv]
    return subprocess.call(cmd)


def main(argv=None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    params = load_params_or_exit(args.params, data_source=True)
    variant = variant_or_exit(params, args.variant, args.params)
    if variant.world_size > 1 and 'LOCAL_RANK' not in os.environ:
        sys.exit(_relaunch_under_torchrun(variant.world_size, argv))

    from sgformer.datasets.folder import DataError
    from sgformer.export import ExportError
    from sgformer.train.checkpoint import CheckpointFolderError
    from sgformer.train.trainer import NonFiniteLossError
    from sgformer.weights import InitError
    from sgformer.tracking import run_description
    from sgformer.train.run import RunPaths, train_variant
    paths = RunPaths(report=Path(args.report), model_dir=Path(args.models) / args.variant,
                     checkpoint_dir=Path(args.checkpoints) / args.variant,
                     metrics=Path(args.metrics) / f'{args.variant}.json', plots_dir=Path(args.plots) / args.variant)
    with exit_on_user_errors(ConfigError, DataError, ExportError, NonFiniteLossError, CheckpointFolderError, InitError):
        train_variant(args.variant, variant, data=params.data, loader=params.loader, runtime=params.runtime,
                      checkpoint=params.checkpoint, tracking=params.tracking, val_crop_pct=params.eval.crop_pct,
                      paths=paths, run_settings=params.run_settings(args.variant),
                      description=run_description(variant, params.differences(args.variant)))


if __name__ == '__main__':
    main()
