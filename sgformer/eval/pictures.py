"""Pictures of an evaluation: the confusion matrix and SG-Former's significance maps.

A self-guided block sorts its stage's tokens by the significance map of the hybrid-scale block
before it, cuts the order into bands and merges each band's keys/values at its own ratio (the
least significant tokens most). The grids show, per image, that map and the resulting bands.
"""
from pathlib import Path

import matplotlib

matplotlib.use('Agg')  # files only, no display
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from matplotlib.colors import ListedColormap  # noqa: E402

from ..io import write_atomic  # noqa: E402
from ..models.sgformer import band_index, band_layout  # noqa: E402

BAND_COLOURS = ('#3b4cc0', '#8db0fe', '#f49a7b', '#b40426')  # least -> most significant


def _save(fig, path: str | Path) -> None:
    write_atomic(path, lambda tmp: fig.savefig(tmp, format='png', dpi=100, bbox_inches='tight'))
    plt.close(fig)


def confusion_png(confusion: torch.Tensor, class_names: list[str], path: str | Path) -> None:
    """The confusion matrix (rows: true class, columns: predicted): with class names and counts in
    the cells up to 30 classes; larger (ImageNet's 1000) as a picture of fixed size without labels."""
    n = len(class_names)
    counts = confusion.cpu().numpy()
    side = min(1.0 + 0.5 * n, 12.0)
    fig, ax = plt.subplots(figsize=(side, side * 0.9))
    ax.imshow(counts, cmap='Blues', interpolation='nearest')
    ax.set_xlabel('predicted')
    ax.set_ylabel('true')
    if n <= 30:
        ax.set_xticks(range(n), class_names, rotation=90, fontsize=7)
        ax.set_yticks(range(n), class_names, fontsize=7)
        threshold = counts.max() / 2
        for (i, j), value in np.ndenumerate(counts):
            ax.text(j, i, str(value), ha='center', va='center', fontsize=6,
                    color='white' if value > threshold else 'black')
    _save(fig, path)


def _upsample(grid: torch.Tensor, height: int, width: int) -> np.ndarray:
    return torch.nn.functional.interpolate(grid[None, None].float(), size=(height, width), mode='nearest')[0, 0].numpy()


def significance_grids(model, images: torch.Tensor, normalized: torch.Tensor, out_dir: str | Path) -> list[Path]:
    """One PNG per stage with self-guided blocks: each image, its significance map, its token bands.

    Args:
        model: an `SGFormer`.
        images: uint8 `B, 3, H, W` (what is drawn).
        normalized: the same batch as the model takes it.
        out_dir: gets `significance_stage{i}.png`.

    Returns:
        The written files.
    """
    maps = model.significance_maps(normalized)
    by_stage: dict[int, list[tuple[str, torch.Tensor]]] = {}
    for name, significance in maps.items():
        by_stage.setdefault(int(name.split('.')[1]), []).append((name, significance.float().cpu()))
    pictures = images.permute(0, 2, 3, 1).cpu().numpy()
    height, width = pictures.shape[1:3]
    written = []
    for stage, blocks in sorted(by_stage.items()):
        sr_ratio = model.sr_ratios[stage]
        ratios = [r for _, r, _ in band_layout(blocks[0][1][0].numel(), sr_ratio)]
        columns = 1 + 2 * len(blocks)
        fig, axes = plt.subplots(len(pictures), columns, figsize=(1.6 * columns, 1.6 * len(pictures)), squeeze=False)
        for row, picture in enumerate(pictures):
            axes[row, 0].imshow(picture)
            for k, (name, significance) in enumerate(blocks):
                bands = band_index(significance[row:row + 1], sr_ratio)[0]
                axes[row, 1 + 2 * k].imshow(picture)
                axes[row, 1 + 2 * k].imshow(_upsample(significance[row], height, width), cmap='inferno', alpha=0.6)
                axes[row, 2 + 2 * k].imshow(picture)
                axes[row, 2 + 2 * k].imshow(_upsample(bands, height, width), alpha=0.55, vmin=0, vmax=len(ratios) - 1,
                                            cmap=ListedColormap(BAND_COLOURS[-len(ratios):]))
                if row == 0:
                    axes[row, 1 + 2 * k].set_title(f'{name}\nsignificance', fontsize=7)
                    axes[row, 2 + 2 * k].set_title('bands: 1 key per\n' + '/'.join(map(str, ratios)) + ' tokens', fontsize=7)
        axes[0, 0].set_title('image', fontsize=7)
        for ax in axes.flat:
            ax.axis('off')
        path = Path(out_dir) / f'significance_stage{stage}.png'
        _save(fig, path)
        written.append(path)
    return written
