"""DVC stage `make_sample`: writes the procedurally drawn ImageNet-layout sample. Params read: sample."""
import argparse
import sys

from sgformer.config import ConfigError, load_params
from sgformer.data.sample import write_sample


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument('--params', default='params.yaml')
    p.add_argument('--out', help='destination folder (default: sample.out)')
    return p.parse_args(argv)


def main(argv=None) -> None:
    args = parse_args(argv)
    try:
        sample = load_params(args.params).sample
    except ConfigError as e:
        sys.exit(f'error: {e}')
    settings = sample.model_dump(exclude={'out'})
    result = write_sample(args.out or sample.out, **settings)
    print(f"{args.out or sample.out}: {result['train']} train, {result['val']} val images, "
          f"{len(result['odd_files'])} odd files")


if __name__ == '__main__':
    main()
