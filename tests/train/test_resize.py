"""Progressive resizing follows ffcv-imagenet's rule, as a function of the epoch alone."""
from sgformer.config import ProgressiveResize
from sgformer.train.resize import train_img_size, train_img_sizes


def test_min_size_then_a_linear_ramp_rounded_down_to_32_then_img_size():
    ramp = ProgressiveResize(min_size=160, start_ramp=2, end_ramp=6)
    assert train_img_sizes(8, 224, ramp) == [160, 160, 160, 160, 192, 192, 224, 224]
    assert train_img_sizes(3, 96, ProgressiveResize(min_size=64, start_ramp=0, end_ramp=1)) == [64, 96, 96]


def test_without_a_ramp_every_epoch_is_at_img_size():
    assert train_img_sizes(4, 64, None) == [64] * 4
    assert train_img_size(0, 224, ProgressiveResize(min_size=224, start_ramp=0, end_ramp=0)) == 224
