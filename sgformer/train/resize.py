"""Progressive resizing: the training side of each epoch, ffcv-imagenet's rule (`get_resolution`),
a pure function of the epoch, so a run resumed mid-schedule continues at the right side."""
import math

from ..config import ProgressiveResize


def train_img_size(epoch: int, img_size: int, ramp: ProgressiveResize | None) -> int:
    """The side to train epoch `epoch` (0-based) at: `ramp.min_size` up to `ramp.start_ramp`, then
    linearly up to `img_size` at `ramp.end_ramp`, rounded down to a multiple of 32; `img_size`
    without a ramp and from `end_ramp` on."""
    if ramp is None or epoch >= ramp.end_ramp:
        return img_size
    if epoch <= ramp.start_ramp:
        return ramp.min_size
    share = (epoch - ramp.start_ramp) / (ramp.end_ramp - ramp.start_ramp)
    return max(ramp.min_size, math.floor((ramp.min_size + share * (img_size - ramp.min_size)) / 32) * 32)


def train_img_sizes(epochs: int, img_size: int, ramp: ProgressiveResize | None) -> list[int]:
    """`train_img_size` of every epoch."""
    return [train_img_size(epoch, img_size, ramp) for epoch in range(epochs)]
