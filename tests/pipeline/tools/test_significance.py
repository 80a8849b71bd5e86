"""`pipeline.tools.significance`: the evaluate stage's significance-map picture for any image files."""
import pytest
import torch
from PIL import Image

from pipeline.tools.significance import load_images, main
from sgformer.export import save_export

KWARGS = dict(img_size=64, num_classes=3, drop_path_rate=0.0)


@pytest.fixture
def export(tmp_path):
    import timm
    import sgformer.models  # noqa: F401  (registers the sgformer_* models with timm)
    torch.manual_seed(0)
    weights = dict(ema=timm.create_model('sgformer_nano', **KWARGS).state_dict())
    save_export(tmp_path / 'nano', model_name='sgformer_nano', model_kwargs=KWARGS, weights=weights,
                class_index=None, card={})
    return tmp_path / 'nano'


def test_writes_one_grid_per_guided_stage_for_any_images(tmp_path, export):
    files = []
    for i, size in enumerate([(120, 80), (50, 90), (64, 64)]):
        files.append(tmp_path / f'img{i}.{"png" if i else "jpg"}')
        Image.new('RGB', size, (40 * i, 200, 90)).save(files[-1])
    main([*map(str, files), '--model-dir', str(export), '--out', str(tmp_path / 'out')])
    written = sorted(p.name for p in (tmp_path / 'out').iterdir())
    assert written == [f'significance_stage{i}.png' for i in range(3)]  # nano: stages 0-2 have self-guided blocks
    with Image.open(tmp_path / 'out' / 'significance_stage0.png') as picture:
        assert picture.width > picture.height / 3 * 2  # 3 rows: one per image


def test_images_are_cropped_as_the_evaluation_does(tmp_path):
    Image.new('RGB', (200, 100), (255, 0, 0)).save(tmp_path / 'wide.png')
    batch = load_images([tmp_path / 'wide.png'], img_size=64, crop_pct=0.9)
    assert batch.shape == (1, 3, 64, 64) and batch.dtype == torch.uint8 and int(batch[0, 0].min()) == 255


def test_an_unreadable_file_is_named(tmp_path, export):
    (tmp_path / 'broken.jpg').write_bytes(b'not an image')
    with pytest.raises(SystemExit) as exit_info:
        main([str(tmp_path / 'broken.jpg'), '--model-dir', str(export), '--out', str(tmp_path / 'out')])
    assert 'broken.jpg: not an image PIL can read' in str(exit_info.value.code)
