"""DVC stage `describe`: builds every variant and records its size and cost. Params read: variants."""
import argparse
import sys

import timm
import torch

import sgformer  # noqa: F401  (registers the models)
from sgformer.config import ConfigError, load_params
from sgformer.eval.flops import count_macs
from sgformer.io import write_json_atomic


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument('--params', default='params.yaml')
    p.add_argument('--out', default='metrics/models.json')
    return p.parse_args(argv)


def describe(model_name: str, model_kwargs: dict) -> dict:
    """Parameter count and forward MACs of one model at its training resolution."""
    model = timm.create_model(model_name, **model_kwargs)
    size = model_kwargs['img_size']
    with torch.no_grad():
        out = model.eval()(torch.zeros(1, 3, size, size))
    return dict(
        model=model_name,
        img_size=size,
        params_m=round(sum(p.numel() for p in model.parameters()) / 1e6, 3),
        gmacs=round(count_macs(model, (3, size, size)) / 1e9, 3),
        output_shape=list(out.shape),
    )


def main(argv=None) -> None:
    args = parse_args(argv)
    try:
        params = load_params(args.params)
    except ConfigError as e:
        sys.exit(f'error: {e}')
    results = {name: describe(v.model, v.model_kwargs()) for name, v in params.variants.items()}
    for name, r in results.items():
        print(f"{name}: {r['model']} {r['params_m']} M params, {r['gmacs']} GMACs at {r['img_size']}")
    write_json_atomic(args.out, results)


if __name__ == '__main__':
    main()
