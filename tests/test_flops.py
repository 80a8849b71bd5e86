"""MACs counting covers matmuls, convolutions and attention (also the CPU SDPA kernel)."""
import timm
import torch.nn as nn
import torch.nn.functional as F

import sgformer.models  # noqa: F401  (registers the sgformer_* models with timm)
from sgformer.flops import count_macs


class Attn(nn.Module):
    def forward(self, x):  # x: 1, 3, H, W -> attention of H*W tokens with 3 channels over 1 head
        t = x.flatten(2).transpose(1, 2).unsqueeze(1).contiguous()
        return F.scaled_dot_product_attention(t, t, t)


def test_linear_and_conv_exact():
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.Flatten(), nn.Linear(8 * 4 * 4, 5))
    assert count_macs(model, (3, 4, 4)) == 8 * 3 * 9 * 16 + 8 * 16 * 5


def test_cpu_attention_is_counted():
    n = 16 * 16
    assert count_macs(Attn(), (3, 16, 16)) == 2 * n * n * 3  # q kᵀ and attn v


def test_sgformer_s_close_to_paper():
    model = timm.create_model('sgformer_s')
    gmacs = count_macs(model, (3, 224, 224)) / 1e9
    # paper: 4.8 G (fvcore: 4.818); ours also counts the no-grad significance pass
    assert 4.7 < gmacs < 5.1
    assert model.training  # mode restored
