"""Convert an official SG-Former checkpoint (`.pth` with `state_dict` / `state_dict_ema`) into this
project's export format, so `pipeline.evaluate` (and `timm.create_model('local-dir:...')`) can use it.

The released ImageNet-1k checkpoints of S, M and B are in the Google Drive folder linked from the
official README (https://github.com/OliverRensu/SG-Former#checkpoint). Download the one you want,
e.g. as sgformer_s.pth, then:

    python -m pipeline.tools.import_official --checkpoint sgformer_s.pth --model sgformer_s --out models/official_s \\
        --class-index data/betons/class_index.json
    python -m pipeline.evaluate --variant official_s --model-dir models/official_s

`--checkpoint` also takes an http(s) URL (downloaded once into torch's hub cache). The keys go
through the model's `checkpoint_filter_fn`; the file is read with `weights_only=True`.
"""
import argparse
import json
import pickle
import sys
from pathlib import Path

import timm

from sgformer.cli import exit_on_user_errors
from sgformer.export import save_export
from sgformer.models import checkpoint_filter_fn, load_official_checkpoint  # registers the models with timm
from sgformer.weights import local_file


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--checkpoint', required=True, help='official .pth file, or its http(s) URL')
    p.add_argument('--model', required=True, choices=timm.list_models('sgformer_*'), help='the matching timm name')
    p.add_argument('--out', required=True, help='export folder to write')
    p.add_argument('--img-size', type=int, default=224)
    p.add_argument('--num-classes', type=int, default=1000)
    p.add_argument('--class-index', help='class_index.json of the data (synset -> index), stored in the export')
    return p.parse_args(argv)


def import_official(checkpoint: str | Path, model_name: str, out: str | Path, *, img_size: int,
                    num_classes: int, class_index: dict[str, int] | None = None) -> dict:
    """Write the export folder `out`: the EMA weights as `model.safetensors` (the raw ones beside them
    when the file holds both), or the only set of weights the file has."""
    raw = load_official_checkpoint(str(checkpoint))
    sources = {name: raw[key] for key, name in (('state_dict', 'raw'), ('state_dict_ema', 'ema')) if key in raw}
    sources = sources or {'raw': raw}  # a bare state dict: the plain weights
    model_kwargs = dict(img_size=img_size, num_classes=num_classes, drop_path_rate=0.0)
    weights = {}
    for name, state_dict in sources.items():
        model = timm.create_model(model_name, **model_kwargs)
        model.load_state_dict(checkpoint_filter_fn(state_dict, model))  # strict: every key must map
        weights[name] = model.state_dict()
    return save_export(out, model_name=model_name, model_kwargs=model_kwargs, weights=weights, class_index=class_index,
                       card=dict(variant=Path(out).name, metrics={}, mlflow_run_id=None, source=str(checkpoint)))


def main(argv=None) -> None:
    args = parse_args(argv)
    class_index = json.loads(Path(args.class_index).read_text()) if args.class_index else None
    if class_index is not None and len(class_index) != args.num_classes:
        sys.exit(f'error: {args.class_index} has {len(class_index)} classes but --num-classes is {args.num_classes}')
    with exit_on_user_errors():  # a full disk while writing the export
        try:
            card = import_official(local_file(args.checkpoint), args.model, args.out, img_size=args.img_size,
                                   num_classes=args.num_classes, class_index=class_index)
        except (RuntimeError, KeyError, FileNotFoundError, pickle.UnpicklingError) as e:
            sys.exit(f'error: {args.checkpoint} does not load into {args.model}: {str(e).splitlines()[0]}')
    print(f"{args.out}: {card['model']} weights {', '.join(sorted(set(card['weights'].values())))} written")


if __name__ == '__main__':
    main()
