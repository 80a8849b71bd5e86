"""DVC stage `evaluate`: accuracy, speed, size and significance-map pictures of one exported variant.
Params read: eval, loader, data, augment (crop_pct), variants.<name>, tracking.

    python -m pipeline.evaluate --variant nano                     # models/nano, as the stage runs it
    python -m pipeline.evaluate --variant official_s --model-dir models/official_s   # any export folder

Writes <metrics>/eval_<variant>.json, <plots>/<variant>/{confusion.csv,per_class.tsv,images/*.png}
and logs the same numbers (as eval/...) and pictures into the MLflow run that trained the export.
"""
import argparse
import sys
from pathlib import Path

from sgformer.config import ConfigError, load_params


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--variant', required=True, help='a key of `variants`, or any name for --model-dir')
    p.add_argument('--params', default='params.yaml')
    p.add_argument('--models', default='models', help='the export is read from <models>/<variant>/')
    p.add_argument('--model-dir', help='an export folder (card.json + safetensors) instead of <models>/<variant>')
    p.add_argument('--metrics', default='metrics', help='results in <metrics>/eval_<variant>.json')
    p.add_argument('--plots', default='plots', help='tables and pictures in <plots>/<variant>/')
    return p.parse_args(argv)


def main(argv=None) -> None:
    args = parse_args(argv)
    try:
        params = load_params(args.params)
        variant = params.variants.get(args.variant)
        if variant is None and args.model_dir is None:
            raise ConfigError(f'{args.params}: variants.{args.variant}: no such variant '
                              f'(variants: {", ".join(params.variants)}); pass --model-dir to evaluate any export')
    except ConfigError as e:
        sys.exit(f'error: {e}')
    from sgformer.eval.run import EvalPaths, evaluate_export
    model_dir = Path(args.model_dir or Path(args.models) / args.variant)
    if not (model_dir / 'card.json').exists():
        sys.exit(f'error: {model_dir}/card.json not found: train the variant first (or import an official checkpoint)')
    paths = EvalPaths(model_dir=model_dir, betons=Path(params.data.betons), source=Path(params.data.source),
                      metrics=Path(args.metrics) / f'eval_{args.variant}.json', plots_dir=Path(args.plots) / args.variant)
    augment = variant.augment if variant is not None else params.augment
    results = evaluate_export(args.variant, paths=paths, eval_cfg=params.eval, loader_cfg=params.loader,
                              backend=params.data.backend, crop_pct=augment.crop_pct, tracking=params.tracking)
    print(f"{args.variant}: top-1 {results['top1']:.4f}, top-5 {results['top5']:.4f} on {results['images']} images "
          f"at {results['img_size']} px; {results['img_s']:.0f} img/s, {results['gmacs']:.3f} GMACs")


if __name__ == '__main__':
    main()
