"""DVC stage `make_sample`: writes the procedurally drawn ImageNet-layout sample. Params read: sample."""
import argparse

from sgformer.cli import exit_on_user_errors, load_params_or_exit
from sgformer.datasets.sample import write_sample


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument('--params', default='params.yaml')
    p.add_argument('--out', help='destination folder (default: sample.out)')
    return p.parse_args(argv)


def main(argv=None) -> None:
    args = parse_args(argv)
    sample = load_params_or_exit(args.params).sample
    out = args.out or sample.out
    with exit_on_user_errors():
        result = write_sample(out, sample)
    print(f"{out}: {result['train']} train, {result['val']} val images, {len(result['odd_files'])} odd files")


if __name__ == '__main__':
    main()
