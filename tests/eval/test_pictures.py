"""Confusion-matrix and significance-map pictures are written, one grid per self-guided stage."""
import timm
import torch
from PIL import Image

import sgformer.models  # noqa: F401  (registers the sgformer_* models with timm)
from sgformer.augment.transforms import normalize
from sgformer.eval.pictures import confusion_png, significance_grids
from sgformer.models.sgformer import band_index, band_layout


def test_confusion_png(tmp_path):
    confusion_png(torch.tensor([[3, 1], [0, 4]]), ['a', 'b'], tmp_path / 'c.png')
    assert Image.open(tmp_path / 'c.png').format == 'PNG'
    assert not list(tmp_path.glob('.*.tmp'))


def test_significance_grid_per_stage_with_self_guided_blocks(tmp_path):
    torch.manual_seed(0)
    model = timm.create_model('sgformer_nano', img_size=64, num_classes=3).eval()
    images = torch.randint(0, 256, (3, 3, 64, 64), dtype=torch.uint8)
    written = significance_grids(model, images, normalize(images), tmp_path)
    # nano: stages 0-2 hold a hybrid -> self-guided pair, stage 3 is global attention only
    assert [p.name for p in written] == [f'significance_stage{i}.png' for i in range(3)]
    widths = {p.name: Image.open(p).size for p in written}
    assert all(h > w for w, h in widths.values())  # 3 rows of 3 square panels, titles on top


def test_bands_have_the_layout_lengths():
    significance = torch.rand(2, 16, 16)
    bands = band_index(significance, 8)
    lengths = [length for length, _, _ in band_layout(256, 8)]
    assert [(bands[0] == b).sum().item() for b in range(len(lengths))] == lengths
    # the most significant token is in the last band, the least in the first
    assert bands[0].flatten()[significance[0].flatten().argmax()] == len(lengths) - 1
    assert bands[0].flatten()[significance[0].flatten().argmin()] == 0
