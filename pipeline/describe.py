"""DVC stage `describe`: builds every variant and reports its size and cost before any training (the
evaluate stage measures the same of each export). Params read: variants, train (its img_size,
num_classes, drop_path_rate), data.betons (the class count when num_classes is null)."""
import argparse
import json
from pathlib import Path

import timm
import torch

import sgformer.models  # noqa: F401  (registers the sgformer_* models with timm)
from sgformer.cli import load_params_or_exit
from sgformer.flops import model_size
from sgformer.io import write_json_atomic


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument('--params', default='params.yaml')
    p.add_argument('--out', default='reports/models.json')
    return p.parse_args(argv)


def describe(model_name: str, model_kwargs: dict) -> dict:
    """Parameter count and forward MACs of one model at its training resolution."""
    model = timm.create_model(model_name, **model_kwargs).eval()
    size = model_kwargs['img_size']
    with torch.no_grad():
        out = model(torch.zeros(1, 3, size, size))
    return dict(img_size=size, num_outputs=out.shape[1],
                **{k: round(v, 3) for k, v in model_size(model, size).items()})


def data_class_count(betons: str) -> int:
    """The class count of the betons, read only for a variant that leaves `num_classes` to the data."""
    return len(json.loads((Path(betons) / 'class_index.json').read_text()))


def main(argv=None) -> None:
    args = parse_args(argv)
    params = load_params_or_exit(args.params)
    results = {name: describe(v.model, dict(v.model_kwargs(), num_classes=v.num_classes if v.num_classes is not None
                                            else data_class_count(params.data.betons)))
               for name, v in params.variants.items()}
    for name, r in results.items():
        print(f"{name}: {params.variants[name].model} {r['params_m']} M params, {r['gmacs']} GMACs at {r['img_size']}")
    write_json_atomic(args.out, results)


if __name__ == '__main__':
    main()
