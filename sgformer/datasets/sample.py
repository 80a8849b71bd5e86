"""A procedurally drawn, ImageNet-layout sample dataset: offline and deterministic.

Each class is a shape or texture (circle, square, triangle, star, cross, ring, stripes, checker,
dots, zigzag) drawn at a random position, scale and rotation over background clutter (thin random lines). The
object is light on a dark background or dark on a light one, each side in a random hue: the class is
in the shape, not in the colour, so a linear probe on the mean colour cannot solve it, while the
luminance edge keeps it learnable in a few CPU minutes. Image sides vary between `min_size` and
`max_size`.

Layout: `<out>/{train,val}/<synset>/<synset>_<index>.JPEG`, synsets `n00000001`, `n00000002`, ...
With `bad_files`, a few broken files (truncated JPEG, zero bytes) and odd-but-readable files (PNG
named .JPEG, CMYK and grayscale JPEGs) are added, as real ImageNet has them.
"""
import io
import math
import shutil
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from ..config import Sample

CLASSES = ('circle', 'square', 'triangle', 'star', 'cross', 'ring', 'stripes', 'checker', 'dots', 'zigzag')
MASK = 128  # side of the canonical drawing of one shape, before scaling and rotation


def synset(index: int) -> str:
    """ImageNet-like folder name of class `index` (0-based)."""
    return f'n{index + 1:08d}'


def _polygon(n: int, radius: float, inner: float | None = None, phase: float = -math.pi / 2) -> list[tuple]:
    """Vertices of a regular polygon (or star, with an inner radius) centred in the mask."""
    c, points, steps = MASK / 2, [], n * (2 if inner else 1)
    for k in range(steps):
        r = inner if inner and k % 2 else radius
        a = phase + 2 * math.pi * k / steps
        points.append((c + r * math.cos(a), c + r * math.sin(a)))
    return points


def _shape_mask(name: str) -> Image.Image:
    """The class's drawing as a white-on-black MASK x MASK mask, upright and centred."""
    mask = Image.new('L', (MASK, MASK), 0)
    d, c, r = ImageDraw.Draw(mask), MASK / 2, MASK * 0.45
    box = (c - r, c - r, c + r, c + r)
    if name == 'circle':
        d.ellipse(box, fill=255)
    elif name == 'square':
        d.rectangle((c - r * 0.8, c - r * 0.8, c + r * 0.8, c + r * 0.8), fill=255)
    elif name == 'triangle':
        d.polygon(_polygon(3, r), fill=255)
    elif name == 'star':
        d.polygon(_polygon(5, r, inner=r * 0.4), fill=255)
    elif name == 'cross':
        w = r * 0.3
        d.rectangle((c - r, c - w, c + r, c + w), fill=255)
        d.rectangle((c - w, c - r, c + w, c + r), fill=255)
    elif name == 'ring':
        d.ellipse(box, outline=255, width=int(r * 0.3))
    elif name == 'stripes':
        for k in range(5):
            y = c - r + k * 2 * r / 5
            d.rectangle((c - r, y, c + r, y + r / 5), fill=255)
    elif name == 'checker':
        step = 2 * r / 4
        for i in range(4):
            for j in range((i % 2), 4, 2):
                d.rectangle((c - r + i * step, c - r + j * step, c - r + (i + 1) * step, c - r + (j + 1) * step), fill=255)
    elif name == 'dots':
        for i in range(3):
            for j in range(3):
                x, y = c - r + (i + 0.5) * 2 * r / 3, c - r + (j + 0.5) * 2 * r / 3
                d.ellipse((x - r / 7, y - r / 7, x + r / 7, y + r / 7), fill=255)
    elif name == 'zigzag':
        points = [(c - r + k * 2 * r / 6, c + (r * 0.6 if k % 2 else -r * 0.6)) for k in range(7)]
        d.line(points, fill=255, width=int(r * 0.18), joint='curve')
    return mask


def _colour(rng: np.random.Generator, low: int = 0, high: int = 256) -> tuple[int, int, int]:
    return tuple(int(v) for v in rng.integers(low, high, 3))


def _object_and_background(rng: np.random.Generator) -> tuple[tuple, tuple]:
    """A light colour on a dark one, or the reverse, each of a random hue."""
    dark, light = _colour(rng, 0, 110), _colour(rng, 150, 256)
    return (light, dark) if rng.random() < 0.5 else (dark, light)


def _clutter(draw: ImageDraw.ImageDraw, rng: np.random.Generator, w: int, h: int) -> None:
    """Thin random lines behind the object."""
    for _ in range(int(rng.integers(2, 6))):
        x0, y0, x1, y1 = rng.uniform(0, 1, 4) * (w, h, w, h)
        draw.line((x0, y0, x1, y1), fill=_colour(rng), width=1)


def draw_image(label: int, rng: np.random.Generator, min_size: int, max_size: int) -> Image.Image:
    """One RGB picture of class `label` with random size, colours, clutter, position, scale, angle."""
    w, h = (int(v) for v in rng.integers(min_size, max_size + 1, 2))
    colour, background = _object_and_background(rng)
    image = Image.new('RGB', (w, h), background)
    _clutter(ImageDraw.Draw(image), rng, w, h)
    side = max(8, int(rng.uniform(0.5, 0.9) * min(w, h)))
    mask = _shape_mask(CLASSES[label]).rotate(float(rng.uniform(0, 360)), resample=Image.BILINEAR)
    mask = mask.resize((side, side), Image.BILINEAR)
    x, y = int(rng.integers(0, w - side + 1)), int(rng.integers(0, h - side + 1))
    image.paste(colour, (x, y, x + side, y + side), mask)
    return image


def _jpeg(image: Image.Image, quality: int) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format='JPEG', quality=quality)
    return buf.getvalue()


def _odd_files(rng: np.random.Generator, num_classes: int, min_size: int, max_size: int,
               quality: int) -> dict[str, bytes]:
    """Broken and unusual files, keyed by their path relative to the dataset root."""
    def path(split, k, kind):
        name = synset(k % num_classes)
        return f'{split}/{name}/{name}_{kind}.JPEG'

    def drawn(k):
        return draw_image(k % num_classes, rng, min_size, max_size)

    png = io.BytesIO()
    drawn(2).save(png, format='PNG')
    truncated = _jpeg(drawn(0), quality)
    return {
        path('train', 0, 'truncated'): truncated[:len(truncated) // 2],
        path('train', 1, 'empty'): b'',
        path('train', 2, 'png'): png.getvalue(),
        path('train', 3, 'cmyk'): _jpeg(drawn(3).convert('CMYK'), quality),
        path('val', 4, 'gray'): _jpeg(drawn(4).convert('L'), quality),
    }


def write_sample(out: str | Path, sample: Sample = Sample()) -> dict:
    """Write the sample dataset described by `sample` to `out`, replacing it atomically (temp
    folder + rename). The same settings write the same bytes.

    Returns:
        Counts: images per split and the relative paths of the odd files.
    """
    num_classes, seed = sample.num_classes, sample.seed
    min_size, max_size, jpeg_quality = sample.min_size, sample.max_size, sample.jpeg_quality
    out = Path(out)
    tmp = out.parent / f'.{out.name}.tmp'
    shutil.rmtree(tmp, ignore_errors=True)
    counts = {}
    for split_id, (split, per_class) in enumerate((('train', sample.train_per_class), ('val', sample.val_per_class))):
        for label in range(num_classes):
            folder = tmp / split / synset(label)
            folder.mkdir(parents=True)
            for i in range(per_class):
                rng = np.random.default_rng([seed, split_id, label, i])
                image = draw_image(label, rng, min_size, max_size)
                (folder / f'{synset(label)}_{i:05d}.JPEG').write_bytes(_jpeg(image, jpeg_quality))
        counts[split] = num_classes * per_class
    odd = {}
    if sample.bad_files:
        odd = _odd_files(np.random.default_rng([seed, 2]), num_classes, min_size, max_size, jpeg_quality)
    for rel, data in odd.items():
        (tmp / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp / rel).write_bytes(data)
    if out.exists():
        shutil.rmtree(out)
    tmp.rename(out)
    return dict(counts, odd_files=sorted(odd))
