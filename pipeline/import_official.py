"""Convert an official SG-Former checkpoint (`.pth` with `state_dict` / `state_dict_ema`) into this
project's export format (safetensors + card.json), so `pipeline.evaluate` can evaluate it.

    python -m pipeline.import_official --checkpoint sgformer_s.pth --model sgformer_s --out models/official_s
    python -m pipeline.evaluate --variant official_s --model-dir models/official_s

The keys go through the model's `checkpoint_filter_fn`; the file is read with `weights_only=True`.
"""
import argparse
import json
import sys
from pathlib import Path

import timm
import torch

import sgformer  # noqa: F401  (registers the models)
from sgformer.models.sgformer import checkpoint_filter_fn, load_official_checkpoint
from sgformer.train.export import save_weights, write_model_card


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--checkpoint', required=True, help='official .pth file')
    p.add_argument('--model', required=True, help="the matching timm name, e.g. 'sgformer_s'")
    p.add_argument('--out', required=True, help='export folder to write')
    p.add_argument('--img-size', type=int, default=224)
    p.add_argument('--num-classes', type=int, default=1000)
    p.add_argument('--class-index', help='class_index.json of the val data (synset -> index), stored in the card')
    return p.parse_args(argv)


def import_official(checkpoint: str | Path, model_name: str, out: str | Path, *, img_size: int = 224,
                    num_classes: int = 1000, class_index: dict[str, int] | None = None) -> dict:
    """Write `out/model.safetensors` and/or `out/ema.safetensors`, and `out/card.json`.

    The card always names both weights: when the file holds only one set (e.g. no `state_dict_ema`),
    both point at it (evaluate reads the EMA by default).
    """
    raw = load_official_checkpoint(str(checkpoint))
    sources = {name: raw[key] for key, name in (('state_dict', 'model'), ('state_dict_ema', 'ema')) if key in raw}
    sources = sources or {'model': raw}  # a bare state dict: the plain weights
    model_kwargs = dict(img_size=img_size, num_classes=num_classes, drop_path_rate=0.0)
    for name, state_dict in sources.items():
        model = timm.create_model(model_name, **model_kwargs)
        model.load_state_dict(checkpoint_filter_fn(state_dict, model))  # strict: every key must map
        save_weights(model.state_dict(), Path(out) / f'{name}.safetensors')
    files = {name: f'{name}.safetensors' for name in sources}
    files.setdefault('ema', files.get('model'))  # a missing set of weights points at the other file
    files.setdefault('model', files['ema'])
    return write_model_card(Path(out) / 'card.json', variant=Path(out).name, model=model_name, model_kwargs=model_kwargs,
                            weights=files, metrics={}, class_index=class_index)


def main(argv=None) -> None:
    args = parse_args(argv)
    class_index = json.loads(Path(args.class_index).read_text()) if args.class_index else None
    try:
        card = import_official(args.checkpoint, args.model, args.out, img_size=args.img_size,
                               num_classes=args.num_classes, class_index=class_index)
    except (RuntimeError, KeyError, FileNotFoundError) as e:
        sys.exit(f'error: {args.checkpoint} does not load into {args.model}: {e}')
    print(f"{args.out}: {card['model']} weights {', '.join(card['weights'])} written")


if __name__ == '__main__':
    main()
