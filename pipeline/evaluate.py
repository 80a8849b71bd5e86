"""DVC stage `evaluate`: accuracy, speed, size and significance-map pictures of one exported variant.
Params read: eval, data, loader, runtime.compile, tracking.

    python -m pipeline.evaluate --variant nano                     # models/nano, as the stage runs it
    python -m pipeline.evaluate --variant official_s --model-dir models/official_s   # any export folder

Writes the headline <metrics>/<variant>.json (top1, top5, img_s, params_m, gmacs, gpu_hours), every
number in <details>/eval_<variant>.json, <plots>/<variant>/{confusion.csv,per_class.tsv,images/*.png},
and logs the numbers (as eval/...) and pictures into the MLflow run that trained the export.
"""
import argparse
import sys
from pathlib import Path

from sgformer.cli import exit_on_user_errors, load_params_or_exit, variant_or_exit


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--variant', required=True, help='a key of `variants`, or any name for --model-dir')
    p.add_argument('--params', default='params.yaml')
    p.add_argument('--report', default='reports/convert.json', help="the convert stage's report (skipped images)")
    p.add_argument('--models', default='models', help='the export is read from <models>/<variant>/')
    p.add_argument('--model-dir', help='an export folder (card.json + safetensors) instead of <models>/<variant>')
    p.add_argument('--metrics', default='metrics', help='the headline in <metrics>/<variant>.json')
    p.add_argument('--details', default='reports', help='every number in <details>/eval_<variant>.json')
    p.add_argument('--plots', default='plots', help='tables and pictures in <plots>/<variant>/')
    return p.parse_args(argv)


def main(argv=None) -> None:
    args = parse_args(argv)
    params = load_params_or_exit(args.params, data_source=True)
    if args.model_dir is None:
        variant_or_exit(params, args.variant, args.params, hint='; pass --model-dir to evaluate any export')
    from sgformer.datasets.folder import DataError
    from sgformer.eval.evaluation import EvalPaths, evaluate_export
    from sgformer.export import ExportError
    paths = EvalPaths(model_dir=Path(args.model_dir or Path(args.models) / args.variant), report=Path(args.report),
                      metrics=Path(args.metrics) / f'{args.variant}.json',
                      details=Path(args.details) / f'eval_{args.variant}.json',
                      plots_dir=Path(args.plots) / args.variant)
    with exit_on_user_errors(ExportError, DataError):
        results = evaluate_export(args.variant, paths=paths, eval_cfg=params.eval, data=params.data,
                                  loader=params.loader, tracking=params.tracking,
                                  compile_setting=params.runtime.compile)
    print(f"{args.variant}: top-1 {results['top1']:.4f}, top-5 {results['top5']:.4f} on {results['images']} images "
          f"at {results['img_size']} px; {results['img_s']:.0f} img/s ({results['speed_device']}, "
          f"{results['speed_dtype']}), {results['gmacs']:.3f} GMACs")


if __name__ == '__main__':
    main()
