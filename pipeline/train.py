"""DVC stage `train`: trains one variant (FSDP2 over several ranks). Params read: data, loader,
train, augment, runtime, checkpoint, tracking, eval.crop_pct, variants.<name>.

    python -m pipeline.train --variant nano                        # world_size from params.yaml
    torchrun --standalone --nproc_per_node=8 -m pipeline.train --variant s
    torchrun --nnodes=2 --node_rank=R --nproc_per_node=8 --rdzv-endpoint=HOST:PORT -m pipeline.train --variant b

Run without torchrun and with `world_size > 1`, it relaunches itself under torchrun on this node,
whose elastic agent restarts the ranks up to `runtime.max_restarts` times when one dies. A rerun (or
a restart) after a crash resumes from the newest checkpoint and continues the same MLflow run. On
Slurm: launch/slurm/train.sbatch.
"""
import argparse
import os
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
    p.add_argument('--plots', default='plots', help="every epoch's record in <plots>/train/<variant>.tsv")
    return p.parse_args(argv)


def main(argv=None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    params = load_params_or_exit(args.params, data_source=True)
    variant = variant_or_exit(params, args.variant, args.params)
    if variant.world_size > 1 and 'LOCAL_RANK' not in os.environ:
        from sgformer.train.distributed import launch_local
        sys.exit(launch_local(variant.world_size, max_restarts=params.runtime.max_restarts, module='pipeline.train',
                              args=argv))

    from sgformer.datasets.folder import DataError
    from sgformer.export import ExportError
    from sgformer.train.checkpoint import CheckpointFolderError
    from sgformer.train.distributed import PeerLostError
    from sgformer.train.trainer import NonFiniteLossError
    from sgformer.weights import InitError
    from sgformer.tracking import run_description
    from sgformer.train.run import RunPaths, train_variant
    paths = RunPaths(report=Path(args.report), model_dir=Path(args.models) / args.variant,
                     checkpoint_dir=Path(args.checkpoints) / args.variant,
                     epochs=Path(args.plots) / 'train' / f'{args.variant}.tsv')
    with exit_on_user_errors(ConfigError, DataError, ExportError, NonFiniteLossError, CheckpointFolderError, InitError,
                             PeerLostError):
        train_variant(args.variant, variant, data=params.data, loader=params.loader, runtime=params.runtime,
                      checkpoint=params.checkpoint, tracking=params.tracking, val_crop_pct=params.eval.crop_pct,
                      paths=paths, run_settings=params.run_settings(args.variant),
                      description=run_description(variant, params.differences(args.variant)))


if __name__ == '__main__':
    main()
