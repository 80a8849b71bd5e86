"""Significance maps of your own images: the evaluate stage's picture (each self-guided block's
significance map and token bands, per image) for any image files and any export folder.

    python -m pipeline.tools.significance --model-dir models/nano photo1.jpg photo2.png --out plots/mine

Writes <out>/significance_stage<i>.png, one per stage with self-guided blocks. Images are resized
and centre-cropped to the export's resolution as the evaluation does (crop_pct of the short side).
"""
import argparse
import sys
from pathlib import Path

import torch

from sgformer.config import Eval


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('images', nargs='+', type=Path, help='image files (any format PIL reads)')
    p.add_argument('--model-dir', required=True, type=Path, help='an export folder (card.json + safetensors)')
    p.add_argument('--weights', default=Eval().weights, choices=['ema', 'raw'])
    p.add_argument('--crop-pct', type=float, default=Eval().crop_pct,
                   help='centre crop: crop side / resized short side (default: eval.crop_pct)')
    p.add_argument('--out', required=True, type=Path, help='folder for the PNGs')
    return p.parse_args(argv)


def load_images(paths: list[Path], img_size: int, crop_pct: float) -> torch.Tensor:
    """uint8 `B, 3, img_size, img_size`: each image resized so the crop is `crop_pct` of its short
    side, then centre-cropped (the official eval transform)."""
    from PIL import Image
    from torchvision.transforms import v2
    transform = v2.Compose([v2.PILToTensor(), v2.Resize(int(img_size / crop_pct), antialias=True), v2.CenterCrop(img_size)])
    batch = []
    for path in paths:
        try:
            with Image.open(path) as image:
                batch.append(transform(image.convert('RGB')))
        except OSError as e:
            sys.exit(f'error: {path}: not an image PIL can read ({e})')
    return torch.stack(batch)


def main(argv=None) -> None:
    args = parse_args(argv)
    from sgformer.augment.transforms import normalize
    from sgformer.eval.pictures import significance_grids
    from sgformer.export import ExportError, load_export
    try:
        model, card = load_export(args.model_dir, args.weights)
    except ExportError as e:
        sys.exit(f'error: {e}')
    images = load_images(args.images, card['model_kwargs']['img_size'], args.crop_pct)
    for path in significance_grids(model, images, normalize(images), args.out):
        print(path)


if __name__ == '__main__':
    main()
