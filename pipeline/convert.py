"""DVC stage `convert`: ImageNet-layout folder -> FFCV betons and class index.

Params read: data.source, data.betons, convert. Writes the skipped-image report and the
conversion statistics (a DVC metrics file).
"""
import argparse
import sys

from sgformer.config import ConfigError, load_params
from sgformer.data.beton import DataError, convert_folder
from sgformer.io import write_json_atomic


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument('--params', default='params.yaml')
    p.add_argument('--src', help='ImageNet-layout folder (default: data.source)')
    p.add_argument('--out', help='folder for the betons and class_index.json (default: data.betons)')
    p.add_argument('--report', default='reports/bad_images.json')
    p.add_argument('--metrics', default='metrics/convert.json')
    return p.parse_args(argv)


def main(argv=None) -> None:
    args = parse_args(argv)
    try:
        params = load_params(args.params)
        stats = convert_folder(args.src or params.data.source, args.out or params.data.betons,
                               report=args.report, **params.convert.model_dump())
    except (ConfigError, DataError) as e:
        sys.exit(f'error: {e}')
    write_json_atomic(args.metrics, stats)
    print(f"converted {stats['train']['images']} train + {stats['val']['images']} val images "
          f"({stats['bad_images']} skipped, see {args.report}) at {stats['images_per_s']} img/s")


if __name__ == '__main__':
    main()
