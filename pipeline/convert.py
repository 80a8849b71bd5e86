"""DVC stage `convert`: ImageNet-layout folder -> FFCV betons and class index.

Params read: data.source, data.betons, convert. Writes the report: skipped images, images per
class and the conversion's statistics.
"""
import argparse

from sgformer.cli import exit_on_user_errors, load_params_or_exit
from sgformer.datasets.beton import DataError, convert_folder


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument('--params', default='params.yaml')
    p.add_argument('--src', help='ImageNet-layout folder (default: data.source)')
    p.add_argument('--out', help='folder for the betons and class_index.json (default: data.betons)')
    p.add_argument('--report', default='reports/convert.json')
    return p.parse_args(argv)


def main(argv=None) -> None:
    args = parse_args(argv)
    params = load_params_or_exit(args.params, data_source=args.src is None)
    with exit_on_user_errors(DataError):
        stats = convert_folder(args.src or params.data.source, args.out or params.data.betons, params.convert,
                               report=args.report)
    print(f"converted {stats['train']['images']} train + {stats['val']['images']} val images "
          f"({stats['bad_images']} skipped, see {args.report}) at {stats['images_per_s']} img/s")


if __name__ == '__main__':
    main()
