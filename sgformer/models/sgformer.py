"""SG-Former: Self-guided Transformer with Evolving Token Reallocation

Paper: `SG-Former: Self-guided Transformer with Evolving Token Reallocation`
    - https://arxiv.org/abs/2308.12216 (ICCV 2023)
Original code: https://github.com/OliverRensu/SG-Former

A timm-native re-implementation. With `checkpoint_filter_fn` it loads the official state dicts and
reproduces the official logits at 224 and 448. Differences from the official code, none of which
changes its results there:

* Attention runs through `F.scaled_dot_product_attention`. The significance map (the mean attention
  each key receives) is computed in a separate no-grad pass, in float32, from the same q and k.
* Tokens flow between blocks as `B, H, W, C` maps; convolutions see them as channels-last NCHW views.
* The self-guided block sorts the significance once. The official code sorts the row-major and the
  column-major flattening separately; both orders hold the same tokens except where values tie, so
  one sorted sequence feeds a single `kv` projection (the official `kv1`/`kv2` weights stacked).
* Any input whose sides are multiples of 32 works with the same weights:
  - `pos_embed` is resampled (bicubic) to the stem's grid;
  - the 7x7 local windows are padded, and padded keys are masked out of attention and out of the
    significance map (padded queries are dropped);
  - self-guided bands keep their share of the sorted tokens and their merge ratio r, see
    `band_layout`: a band of L tokens becomes n = max(1, round(L / r)) tokens, its L tokens
    linearly resampled to n * r (identity when L == n * r, always the case at 224 and 448) before
    the shared `Linear(r -> 1)` merges each run of r rank-adjacent tokens.

The timm model contract, as timm's hierarchical transformers (Swin, PVT-v2, HieraDet) keep it:

* `forward_features` returns `B, H/32, W/32, C` (NHWC, `output_fmt = 'NHWC'` as in Swin); the head
  pools over (H, W).
* `forward_intermediates` / `prune_intermediate_layers` take the outputs of `stages.0..3`
  (strides 4, 8, 16, 32), NCHW by default or NHWC. Each stage ends with its own norm, which feeds
  the next stage (as in PVT-v2), so every intermediate is already normalized and `norm=` changes
  nothing.
* `features_only=True` wraps the model in timm's `FeatureGetterNet` (`feature_cls='getter'`, as
  HieraDet and Twins, which also add an absolute position embedding outside any child module):
  NCHW maps, `out_indices` default `(0, 1, 2, 3)`, negative indices allowed.
  `feature_cls='hook'` and `'fx'` also work and return the stages' NHWC maps, as they do for Swin.
  The module-rewriting `'list'` / `'dict'` wrappers are refused: they rebuild the network from its
  child modules and would skip `pos_embed`.
* FX: `timm.models.create_feature_extractor` traces the model; the shape-dependent Python
  (position-embedding resampling, window padding, band layout) and the no-grad significance pass
  are registered with `register_notrace_function` (public names: FX autowraps no function whose
  name starts with `_`), so one traced graph serves every resolution.
"""
import argparse
import math
import re
from collections.abc import Callable
from functools import partial
from itertools import accumulate
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.layers import DropPath, calculate_drop_path_rates, resample_abs_pos_embed, to_2tuple, trunc_normal_
from timm.models import FeatureDictNet, build_model_with_cfg, generate_default_cfgs, register_model
from timm.models._features import feature_take_indices
from timm.models._features_fx import register_notrace_function

__all__ = ['SGFormer']

WINDOW_SIZE = 7  # local window of the hybrid-scale blocks (hard-coded in the official code)

# Self-guided bands per sr_ratio, from the official code: shares of the ascending-sorted tokens
# (low -> high significance) and the merge ratio r of each band (r tokens -> 1 token).
SG_BANDS: dict[int, tuple[tuple[int, ...], tuple[int, ...]]] = {
    8: ((1, 2, 1), (196, 56, 28)),
    4: ((1, 2, 1), (49, 14, 7)),
    2: ((1, 1), (2, 1)),
}


def band_layout(num_tokens: int, sr_ratio: int) -> list[tuple[int, int, int]]:
    """Split `num_tokens` sorted tokens into self-guided bands.

    Band boundaries follow the official code (`N // 4`, `N // 4 * 3` or `N // 2`); a band of L
    tokens with merge ratio r yields n = max(1, round(L / r)) tokens.

    Returns:
        One `(length, merge_ratio, num_out)` triple per band, least significant band first.
    """
    shares, ratios = SG_BANDS[sr_ratio]
    unit = num_tokens // sum(shares)
    bounds = [unit * c for c in accumulate(shares)]
    bounds[-1] = num_tokens
    lengths = [end - start for start, end in zip([0] + bounds[:-1], bounds)]
    return [(length, r, max(1, math.floor(length / r + 0.5))) for length, r in zip(lengths, ratios)]


def band_index(significance: torch.Tensor, sr_ratio: int) -> torch.Tensor:
    """Band of every token, as the self-guided block that consumes `significance` assigns it.

    Args:
        significance: `B, H, W` significance map from a hybrid-scale block.
        sr_ratio: The stage's spatial-reduction ratio (8, 4 or 2).

    Returns:
        `B, H, W` int64 map: 0 for the least significant band, up to `num_bands - 1`.
    """
    B, H, W = significance.shape
    order = significance.flatten(1).argsort(dim=1)
    bands = torch.cat([
        torch.full((length,), i, dtype=torch.int64, device=significance.device)
        for i, (length, _, _) in enumerate(band_layout(H * W, sr_ratio))
    ])
    out = torch.empty_like(order)
    out.scatter_(1, order, bands.expand(B, -1))
    return out.view(B, H, W)


def sincos_pos_embed(dim: int, grid_size: tuple[int, int]) -> torch.Tensor:
    """The official 2-D sin-cos table (MAE / MoCo v3 layout): `[sin x, cos x, sin y, cos y]` halves.

    Returns:
        `1, H * W, dim` float32 tensor, rows in row-major (y, x) order.
    """
    assert dim % 4 == 0, 'sin-cos position embedding needs a dim divisible by 4'
    omega = 1.0 / 10000 ** (torch.arange(dim // 4, dtype=torch.float64) / (dim / 4))
    ys, xs = torch.meshgrid(
        torch.arange(grid_size[0], dtype=torch.float64),
        torch.arange(grid_size[1], dtype=torch.float64),
        indexing='ij',
    )

    def encode(pos: torch.Tensor) -> torch.Tensor:
        out = pos.reshape(-1, 1) * omega
        return torch.cat([out.sin(), out.cos()], dim=1)

    return torch.cat([encode(xs), encode(ys)], dim=1).float().unsqueeze(0)


def _nchw(x: torch.Tensor) -> torch.Tensor:
    """`B, H, W, C` -> `B, C, H, W` view (channels-last memory, no copy)."""
    return x.permute(0, 3, 1, 2)


def _nhwc(x: torch.Tensor) -> torch.Tensor:
    """`B, C, H, W` -> `B, H, W, C` view."""
    return x.permute(0, 2, 3, 1)


def _split_heads(x: torch.Tensor, num_heads: int) -> torch.Tensor:
    """`B, ..., C` -> `B, heads, N, head_dim`."""
    B, C = x.shape[0], x.shape[-1]
    return x.reshape(B, -1, num_heads, C // num_heads).transpose(1, 2)


def _split_kv(kv: torch.Tensor, num_heads: int) -> tuple[torch.Tensor, torch.Tensor]:
    """`B, M, 2C` -> k, v of `B, heads, M, head_dim` (official layout: all k channels, then all v)."""
    B, M, C2 = kv.shape
    k, v = kv.reshape(B, M, 2, num_heads, C2 // (2 * num_heads)).permute(2, 0, 3, 1, 4).unbind(0)
    return k, v


def _fused_linear(x: torch.Tensor, *layers: nn.Linear) -> tuple[torch.Tensor, ...]:
    """Apply several Linear layers that read the same input as one matmul; returns their outputs.

    One wide GEMM reads `x` once and, in backward, sums the input gradient inside the GEMM
    instead of adding one gradient per layer. The split is returned as is (callers unpack it,
    which FX can trace; `list(...)` of a traced tensor cannot be).
    """
    weight = torch.cat([layer.weight for layer in layers])
    biases = [layer.bias if layer.bias is not None else weight.new_zeros(layer.out_features) for layer in layers]
    return F.linear(x, weight, torch.cat(biases)).split([layer.out_features for layer in layers], dim=-1)


def _merge_heads(x: torch.Tensor, H: int, W: int) -> torch.Tensor:
    """`B, heads, H * W, head_dim` -> `B, H, W, C`."""
    B, h, _, d = x.shape
    return x.transpose(1, 2).reshape(B, H, W, h * d)


@register_notrace_function  # reason: no-grad / autocast-off pass, mask-dependent Python branches
@torch.no_grad()
def attention_received(
        q: torch.Tensor,
        k: torch.Tensor,
        scale: float,
        key_mask: torch.Tensor | None = None,
        query_mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """Mean attention each key receives, averaged over heads and then over queries.

    This is the official significance of a key. It needs the attention probabilities, which SDPA
    does not return, so it is recomputed here without grad, in at least float32 (bf16 scores
    would tie and scramble the sort the next block makes).

    Args:
        q: `..., heads, Nq, d` queries.
        k: `..., heads, Nk, d` keys.
        scale: Softmax scale.
        key_mask: Boolean `..., 1, 1, Nk`, False for keys that do not exist (padding).
        query_mask: Float `..., Nq, 1`, 1 for real queries and 0 for padding.

    Returns:
        `..., Nk` tensor, float32 or float64.
    """
    dtype = torch.promote_types(q.dtype, torch.float32)
    with torch.autocast(q.device.type, enabled=False):
        attn = (q.to(dtype) @ k.to(dtype).transpose(-2, -1)) * scale
        if key_mask is not None:
            attn = attn.masked_fill(~key_mask, float('-inf'))
        attn = attn.softmax(dim=-1).mean(dim=-3)  # mean over heads: ..., Nq, Nk
        if query_mask is None:
            return attn.mean(dim=-2)
        return (attn * query_mask).sum(dim=-2) / query_mask.sum(dim=-2)


@register_notrace_function  # reason: padding and masks depend on the map size
def pad_to_windows(
        q: torch.Tensor,
        kv: torch.Tensor,
        window_size: int,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """Pad `B, H, W, C` maps to multiples of the window size.

    Returns:
        Padded q and kv, then the masks of the windowed keys (boolean `B * nW, 1, 1, ws * ws`, False
        for padding) and queries (`B * nW, ws * ws, 1` in q's dtype, 0 for padding), both None
        when nothing is padded.
    """
    B, H, W, _ = kv.shape
    ws = window_size
    pad_h, pad_w = -H % ws, -W % ws
    if not (pad_h or pad_w):
        return q, kv, None, None
    q = F.pad(q, (0, 0, 0, pad_w, 0, pad_h))
    kv = F.pad(kv, (0, 0, 0, pad_w, 0, pad_h))
    Hp, Wp = H + pad_h, W + pad_w
    valid = torch.zeros(Hp, Wp, dtype=torch.bool, device=q.device)
    valid[:H, :W] = True
    valid = _window_partition(valid.view(1, Hp, Wp, 1, 1), ws).view(-1, 1, 1, ws * ws)  # nW, 1, 1, ws*ws
    key_mask = valid.repeat(B, 1, 1, 1)
    query_mask = key_mask.view(-1, ws * ws, 1).to(q.dtype)
    return q, kv, key_mask, query_mask


def _window_partition(x: torch.Tensor, window_size: int) -> torch.Tensor:
    """`B, H, W, heads, d` (H, W multiples of window_size) -> `B * nW, heads, ws * ws, d`."""
    B, H, W, h, d = x.shape
    x = x.view(B, H // window_size, window_size, W // window_size, window_size, h, d)
    return x.permute(0, 1, 3, 5, 2, 4, 6).reshape(-1, h, window_size * window_size, d)


def _window_reverse(windows: torch.Tensor, window_size: int, H: int, W: int) -> torch.Tensor:
    """`B * nW, heads, ws * ws, d` -> `B, H, W, heads * d`."""
    _, h, _, d = windows.shape
    x = windows.view(-1, H // window_size, W // window_size, h, window_size, window_size, d)
    return x.permute(0, 1, 4, 2, 5, 3, 6).reshape(-1, H, W, h * d)


@register_notrace_function  # reason: in-place item assignment
def dwconv_residual_weight(weight: torch.Tensor) -> torch.Tensor:
    """Kernel of `h + DWConv3x3(h)`: the depthwise 3x3 kernel with 1 added at its centre tap."""
    weight = weight.clone()
    weight[:, :, 1, 1] += 1
    return weight


@register_notrace_function  # reason: band lengths and merge counts are Python ints from the token count
def merge_bands(
        x: torch.Tensor,
        sr_ratio: int,
        weights: list[torch.Tensor],
        biases: list[torch.Tensor],
) -> torch.Tensor:
    """Merge sorted `B, N, C` tokens band by band (`band_layout`), r tokens -> 1 by `Linear(r -> 1)`.

    Returns:
        `B, M, C` merged tokens, least significant band first.
    """
    B, N, C = x.shape
    layout = band_layout(N, sr_ratio)
    merged = []
    for band, (length, r, n), weight, bias in zip(x.split([L for L, _, _ in layout], dim=1), layout, weights, biases):
        if length != n * r:  # resample the band so that it splits into n runs of r tokens
            band = F.interpolate(band.transpose(1, 2), size=n * r, mode='linear', align_corners=False).transpose(1, 2)
        # B, n, r, C -> B, n, C: weighted sum of r rank-adjacent tokens + bias
        merged.append((weight @ band.reshape(B, n, r, C)).squeeze(2) + bias)
    return torch.cat(merged, dim=1)


@register_notrace_function  # reason: resampling depends on the input size
def add_pos_embed(x: torch.Tensor, pos_embed: torch.Tensor, grid_size: tuple[int, int]) -> torch.Tensor:
    """Add `1, gh * gw, C` `pos_embed` to `B, H, W, C` tokens, resampled (bicubic) when (H, W) != grid_size."""
    H, W = x.shape[1:3]
    if (H, W) != grid_size:
        pos_embed = resample_abs_pos_embed(pos_embed, (H, W), grid_size, num_prefix_tokens=0)
    return x + pos_embed.view(1, H, W, -1)


class Mlp(nn.Module):
    """`fc1 -> GELU(h + DWConv3x3(h)) -> fc2`: the depthwise conv is a residual inside the hidden layer."""

    def __init__(
            self,
            in_features: int,
            hidden_features: int,
            act_layer: Callable[..., nn.Module] = nn.GELU,
            drop: float = 0.,
            device=None,
            dtype=None,
    ):
        super().__init__()
        dd = dict(device=device, dtype=dtype)
        self.fc1 = nn.Linear(in_features, hidden_features, **dd)
        self.dwconv = nn.Conv2d(hidden_features, hidden_features, 3, 1, 1, groups=hidden_features, **dd)
        self.act = act_layer()
        self.drop1 = nn.Dropout(drop)
        self.fc2 = nn.Linear(hidden_features, in_features, **dd)
        self.drop2 = nn.Dropout(drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # B, H, W, C
        x = self.fc1(x)
        # h + DWConv(h) is one depthwise conv whose kernel has 1 added at its centre tap: this
        # saves a full pass (and its backward) over the largest activation of the block.
        weight = dwconv_residual_weight(self.dwconv.weight)
        x = self.act(_nhwc(F.conv2d(_nchw(x), weight, self.dwconv.bias, padding=1, groups=self.dwconv.groups)))
        x = self.drop1(x)
        return self.drop2(self.fc2(x))


class AttentionBase(nn.Module):
    """What every SG-Former attention shares: heads, the LePE term and the output projection.

    LePE (a depthwise 3x3 conv of a linear map of the input) is added to the attention output
    before `proj`, as in the official code.
    """

    def __init__(
            self,
            dim: int,
            num_heads: int,
            qk_scale: float | None = None,
            attn_drop: float = 0.,
            proj_drop: float = 0.,
            device=None,
            dtype=None,
    ):
        super().__init__()
        assert dim % num_heads == 0, f'dim {dim} should be divisible by num_heads {num_heads}.'
        dd = dict(device=device, dtype=dtype)
        self.dim = dim
        self.num_heads = num_heads
        self.scale = qk_scale or (dim // num_heads) ** -0.5
        self.attn_drop = attn_drop
        self.lepe_linear = nn.Linear(dim, dim, **dd)
        self.lepe_conv = nn.Conv2d(dim, dim, 3, 1, 1, groups=dim, **dd)
        self.proj = nn.Linear(dim, dim, **dd)
        self.proj_drop = nn.Dropout(proj_drop)

    def _sdpa(self, q, k, v, attn_mask=None) -> torch.Tensor:
        dropout_p = self.attn_drop if self.training else 0.
        return F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, dropout_p=dropout_p, scale=self.scale)

    def _lepe(self, lepe_in: torch.Tensor) -> torch.Tensor:
        """Depthwise 3x3 conv of `lepe_linear(x)` (computed by the caller, fused with q)."""
        return _nhwc(self.lepe_conv(_nchw(lepe_in)))

    def _output(self, out: torch.Tensor, lepe: torch.Tensor) -> torch.Tensor:
        return self.proj_drop(self.proj(out + lepe))


class GlobalAttention(AttentionBase):
    """Plain multi-head self-attention over all tokens (stage 4, sr_ratio 1)."""

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool = True, device=None, dtype=None, **kwargs):
        super().__init__(dim, num_heads, device=device, dtype=dtype, **kwargs)
        dd = dict(device=device, dtype=dtype)
        self.q = nn.Linear(dim, dim, bias=qkv_bias, **dd)
        self.kv = nn.Linear(dim, dim * 2, bias=qkv_bias, **dd)

    def forward(self, x: torch.Tensor, significance: torch.Tensor | None = None):
        B, H, W, C = x.shape
        q, kv, lepe = _fused_linear(x, self.q, self.kv, self.lepe_linear)
        k, v = _split_kv(kv.reshape(B, H * W, 2 * C), self.num_heads)
        out = _merge_heads(self._sdpa(_split_heads(q, self.num_heads), k, v), H, W)
        return self._output(out, self._lepe(lepe)), None


class HybridScaleAttention(AttentionBase):
    """Hybrid-scale attention: half the heads attend globally to an sr x sr strided-conv summary of
    the map, the other half locally inside 7x7 windows. Also returns the significance map that
    guides the next (self-guided) block: the mean attention each position receives, local + global.
    """

    def __init__(
            self,
            dim: int,
            num_heads: int,
            sr_ratio: int,
            qkv_bias: bool = True,
            window_size: int = WINDOW_SIZE,
            device=None,
            dtype=None,
            **kwargs,
    ):
        super().__init__(dim, num_heads, device=device, dtype=dtype, **kwargs)
        assert num_heads % 2 == 0, 'hybrid-scale attention splits the heads in two halves'
        dd = dict(device=device, dtype=dtype)
        self.sr_ratio = sr_ratio
        self.window_size = window_size
        # q holds the global heads first, then the local heads (official q1, q2).
        self.q = nn.Linear(dim, dim, bias=qkv_bias, **dd)
        self.sr = nn.Conv2d(dim, dim, kernel_size=sr_ratio, stride=sr_ratio, **dd)
        self.sr_norm = nn.LayerNorm(dim, **dd)
        self.act = nn.GELU()
        self.kv_global = nn.Linear(dim, dim, bias=qkv_bias, **dd)
        self.kv_local = nn.Linear(dim, dim, bias=qkv_bias, **dd)

    def forward(self, x: torch.Tensor, significance: torch.Tensor | None = None):
        B, H, W, C = x.shape
        h = self.num_heads // 2
        q, kv_local, lepe = _fused_linear(x, self.q, self.kv_local, self.lepe_linear)
        q_global, q_local = q.chunk(2, dim=-1)

        # Global heads: every query attends to the sr x sr strided-conv summary of the map.
        pooled = self.act(self.sr_norm(_nhwc(self.sr(_nchw(x)))))  # B, H/sr, W/sr, C
        Hs, Ws = pooled.shape[1:3]
        q_global = _split_heads(q_global, h)
        k_global, v_global = _split_kv(self.kv_global(pooled.reshape(B, Hs * Ws, C)), h)
        out_global = _merge_heads(self._sdpa(q_global, k_global, v_global), H, W)
        received_global = attention_received(q_global, k_global, self.scale)  # B, Hs*Ws
        received_global = F.interpolate(received_global.view(B, 1, Hs, Ws), size=(H, W), mode='nearest')[:, 0]

        # Local heads: 7x7 windows, padded where the map is not a multiple of 7.
        out_local, received_local = self._local(q_local, kv_local)
        out = torch.cat([out_global, out_local], dim=-1)
        return self._output(out, self._lepe(lepe)), received_local + received_global

    def _local(self, q: torch.Tensor, kv: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        H, W = kv.shape[1:3]
        ws, h = self.window_size, self.num_heads // 2
        q, kv, key_mask, query_mask = pad_to_windows(q, kv, ws)
        B, Hp, Wp, C = kv.shape
        d = C // (2 * h)
        q = _window_partition(q.view(B, Hp, Wp, h, d), ws)
        k, v = kv.view(B, Hp, Wp, 2, h, d).unbind(3)
        k, v = _window_partition(k, ws), _window_partition(v, ws)

        out = _window_reverse(self._sdpa(q, k, v, attn_mask=key_mask), ws, Hp, Wp)
        received = attention_received(q, k, self.scale, key_mask, query_mask)  # B*nW, ws*ws
        received = _window_reverse(received.view(-1, 1, ws * ws, 1), ws, Hp, Wp)[..., 0]
        return out[:, :H, :W], received[:, :H, :W]


class SelfGuidedAttention(AttentionBase):
    """Self-guided attention: queries keep full resolution; keys and values come from tokens sorted
    by the previous block's significance, cut into bands, each band merged r-to-1 by a learned
    `Linear(r -> 1)` shared across channels. Less significant bands get larger r, so salient
    regions keep more tokens.
    """

    def __init__(self, dim: int, num_heads: int, sr_ratio: int, qkv_bias: bool = True, device=None, dtype=None, **kwargs):
        super().__init__(dim, num_heads, device=device, dtype=dtype, **kwargs)
        if sr_ratio not in SG_BANDS:
            raise ValueError(f'self-guided attention has bands for sr_ratio in {sorted(SG_BANDS)}, got {sr_ratio}')
        dd = dict(device=device, dtype=dtype)
        self.sr_ratio = sr_ratio
        self.q = nn.Linear(dim, dim, bias=qkv_bias, **dd)
        self.kv = nn.Linear(dim, dim * 2, bias=qkv_bias, **dd)
        self.band_merge = nn.ModuleList([nn.Linear(r, 1, **dd) for r in SG_BANDS[sr_ratio][1]])

    def forward(self, x: torch.Tensor, significance: torch.Tensor | None = None):
        assert significance is not None, 'a self-guided block needs the significance map of the block before it'
        B, H, W, C = x.shape
        q, lepe = _fused_linear(x, self.q, self.lepe_linear)
        tokens = self.reallocate(x.reshape(B, H * W, C), significance.reshape(B, H * W))
        k, v = _split_kv(self.kv(tokens), self.num_heads)
        out = _merge_heads(self._sdpa(_split_heads(q, self.num_heads), k, v), H, W)
        return self._output(out, self._lepe(lepe)), None

    def reallocate(self, x: torch.Tensor, significance: torch.Tensor) -> torch.Tensor:
        """`B, N, C` tokens -> `B, M, C` merged tokens, least significant band first."""
        C = x.shape[-1]
        order = significance.argsort(dim=1)  # ascending, like the official torch.sort
        x = x.gather(1, order.unsqueeze(-1).expand(-1, -1, C))
        return merge_bands(
            x,
            self.sr_ratio,
            [merge.weight for merge in self.band_merge],
            [merge.bias for merge in self.band_merge],
        )


class Block(nn.Module):
    """Pre-norm transformer block; passes the significance map between attention blocks."""

    def __init__(
            self,
            dim: int,
            num_heads: int,
            attn_type: str,
            sr_ratio: int = 1,
            mlp_ratio: float = 4.,
            qkv_bias: bool = True,
            qk_scale: float | None = None,
            proj_drop: float = 0.,
            attn_drop: float = 0.,
            drop_path: float = 0.,
            act_layer: Callable[..., nn.Module] = nn.GELU,
            norm_layer: Callable[..., nn.Module] = partial(nn.LayerNorm, eps=1e-6),
            device=None,
            dtype=None,
    ):
        super().__init__()
        dd = dict(device=device, dtype=dtype)
        attn_kwargs = dict(qkv_bias=qkv_bias, qk_scale=qk_scale, attn_drop=attn_drop, proj_drop=proj_drop, **dd)
        self.attn_type = attn_type
        self.norm1 = norm_layer(dim, **dd)
        if attn_type == 'hybrid':
            self.attn = HybridScaleAttention(dim, num_heads, sr_ratio, **attn_kwargs)
        elif attn_type == 'guided':
            self.attn = SelfGuidedAttention(dim, num_heads, sr_ratio, **attn_kwargs)
        else:
            self.attn = GlobalAttention(dim, num_heads, **attn_kwargs)
        self.drop_path1 = DropPath(drop_path) if drop_path > 0. else nn.Identity()
        self.norm2 = norm_layer(dim, **dd)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), act_layer=act_layer, drop=proj_drop, **dd)
        self.drop_path2 = DropPath(drop_path) if drop_path > 0. else nn.Identity()

    def forward(self, x: torch.Tensor, significance: torch.Tensor | None = None):
        """`B, H, W, C` -> (`B, H, W, C`, significance map for the next block or None)."""
        y, significance = self.attn(self.norm1(x), significance)
        x = x + self.drop_path1(y)
        x = x + self.drop_path2(self.mlp(self.norm2(x)))
        return x, significance


class ConvNorm(nn.Sequential):
    """Conv2d (no bias) + GroupNorm(1, C): the official `Conv2d_BN`, whose "BN" is a GroupNorm."""

    def __init__(self, in_chs: int, out_chs: int, kernel_size: int = 1, stride: int = 1, groups: int = 1, device=None, dtype=None):
        super().__init__()
        dd = dict(device=device, dtype=dtype)
        self.conv = nn.Conv2d(in_chs, out_chs, kernel_size, stride, kernel_size // 2, groups=groups, bias=False, **dd)
        self.norm = nn.GroupNorm(1, out_chs, **dd)


class Stem(nn.Module):
    """Three 3x3 convs (stride 2, 1, 2) to stride 4, then a LayerNorm on the tokens."""

    def __init__(self, in_chs: int, out_chs: int, device=None, dtype=None):
        super().__init__()
        dd = dict(device=device, dtype=dtype)
        self.conv = nn.Sequential(
            ConvNorm(in_chs, out_chs, 3, 2, **dd),
            nn.GELU(),
            ConvNorm(out_chs, out_chs, 3, 1, **dd),
            nn.GELU(),
            ConvNorm(out_chs, out_chs, 3, 2, **dd),
        )
        self.norm = nn.LayerNorm(out_chs, **dd)  # default eps 1e-5, as in the official code

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # B, C, H, W image -> B, H/4, W/4, C
        return self.norm(_nhwc(self.conv(x)))


class PatchMerging(nn.Module):
    """Stride-2 downsampling: 1x1 conv, depthwise 3x3 stride-2 conv, 1x1 conv, each with GroupNorm."""

    def __init__(self, dim: int, out_dim: int, device=None, dtype=None):
        super().__init__()
        dd = dict(device=device, dtype=dtype)
        self.conv1 = ConvNorm(dim, out_dim, 1, **dd)
        self.conv2 = ConvNorm(out_dim, out_dim, 3, 2, groups=out_dim, **dd)
        self.conv3 = ConvNorm(out_dim, out_dim, 1, **dd)
        self.act = nn.GELU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # B, H, W, C -> B, H/2, W/2, C'
        x = self.act(self.conv1(_nchw(x)))
        x = self.act(self.conv2(x))
        return _nhwc(self.conv3(x))


class SGFormerStage(nn.Module):
    """Optional downsampling, the blocks (hybrid-scale / self-guided pairs, or global), a final norm."""

    def __init__(
            self,
            dim_in: int,
            dim: int,
            depth: int,
            num_heads: int,
            sr_ratio: int,
            downsample: bool,
            guided: bool,
            mlp_ratio: float = 4.,
            qkv_bias: bool = True,
            qk_scale: float | None = None,
            proj_drop: float = 0.,
            attn_drop: float = 0.,
            drop_path: list[float] | None = None,
            norm_layer: Callable[..., nn.Module] = partial(nn.LayerNorm, eps=1e-6),
            device=None,
            dtype=None,
    ):
        super().__init__()
        dd = dict(device=device, dtype=dtype)
        self.grad_checkpointing = False
        self.downsample = PatchMerging(dim_in, dim, **dd) if downsample else nn.Identity()
        self.blocks = nn.ModuleList([
            Block(
                dim,
                num_heads,
                attn_type=_attn_type(j, sr_ratio, guided),
                sr_ratio=sr_ratio,
                mlp_ratio=mlp_ratio,
                qkv_bias=qkv_bias,
                qk_scale=qk_scale,
                proj_drop=proj_drop,
                attn_drop=attn_drop,
                drop_path=drop_path[j] if drop_path else 0.,
                norm_layer=norm_layer,
                **dd,
            )
            for j in range(depth)
        ])
        self.norm = norm_layer(dim, **dd)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # B, H, W, C
        x = self.downsample(x)
        significance = None
        for blk in self.blocks:
            if self.grad_checkpointing and not torch.jit.is_scripting():
                x, significance = checkpoint(blk, x, significance, use_reentrant=False)
            else:
                x, significance = blk(x, significance)
        return self.norm(x)


def _attn_type(index: int, sr_ratio: int, guided: bool) -> str:
    """Official rule: with sr_ratio > 1, even blocks are hybrid-scale and odd blocks (in stages that
    allow it) self-guided; with sr_ratio 1 every block is global."""
    if sr_ratio == 1:
        return 'global'
    return 'guided' if guided and index % 2 == 1 else 'hybrid'


def _resolve_norm_layer(norm_layer: Any) -> Callable[..., nn.Module]:
    """Accept a layer class/partial, or the string form a fixture config stores."""
    if not isinstance(norm_layer, str):
        return norm_layer
    eps = re.search(r'eps=([0-9.eE+-]+)', norm_layer)
    if 'LayerNorm' not in norm_layer:
        raise ValueError(f'unsupported norm_layer {norm_layer!r}')
    return partial(nn.LayerNorm, eps=float(eps.group(1))) if eps else nn.LayerNorm


class SGFormer(nn.Module):
    """SG-Former: hybrid-scale and self-guided attention with significance-driven token reallocation.

    Keyword names follow the official constructor, so an official config dict builds the model.
    Tokens stay `B, H, W, C` throughout: `forward_features` returns NHWC (`output_fmt`), while
    `forward_intermediates` and `features_only=True` give NCHW maps by default.
    """
    output_fmt: str = 'NHWC'  # of forward_features; timm's feature wrappers read it

    def __init__(
            self,
            img_size: int | tuple[int, int] = 224,
            patch_size: int = 4,
            in_chans: int = 3,
            num_classes: int = 1000,
            global_pool: str = 'avg',
            embed_dims: tuple[int, ...] = (64, 128, 256, 512),
            num_heads: tuple[int, ...] = (2, 4, 8, 16),
            mlp_ratios: tuple[float, ...] = (4, 4, 4, 4),
            qkv_bias: bool = True,
            qk_scale: float | None = None,
            drop_rate: float = 0.,
            proj_drop_rate: float = 0.,
            attn_drop_rate: float = 0.,
            drop_path_rate: float = 0.,
            norm_layer: Any = partial(nn.LayerNorm, eps=1e-6),
            depths: tuple[int, ...] = (2, 4, 16, 1),
            sr_ratios: tuple[int, ...] = (8, 4, 2, 1),
            num_stages: int = 4,
            linear: bool = False,
            device=None,
            dtype=None,
    ):
        """
        Args:
            img_size: Training resolution; sizes `pos_embed`. Other inputs (sides multiples of 32) also run.
            patch_size: Accepted for the official signature; the stem is always stride 4.
            in_chans: Input channels.
            num_classes: Classifier outputs (0 for none).
            global_pool: 'avg' or '' (no pooling in `forward_head`).
            embed_dims, num_heads, mlp_ratios, depths, sr_ratios: Per-stage architecture.
            qkv_bias: Bias in the q / kv projections.
            qk_scale: Override of the head_dim ** -0.5 softmax scale.
            drop_rate: Dropout before the classifier (timm meaning; unused by the official recipe).
            proj_drop_rate: Dropout after attention / MLP projections.
            attn_drop_rate: Attention dropout.
            drop_path_rate: Stochastic depth, rising linearly over all blocks.
            norm_layer: Block / stage norm layer.
            num_stages: Must be len(depths); accepted for the official signature.
            linear: Accepted for the official signature (unused there too).
        """
        super().__init__()
        assert patch_size == 4 or patch_size == 16, 'the stem is stride 4; patch_size is only accepted for compatibility'
        assert num_stages == len(depths) == len(embed_dims) == len(num_heads) == len(sr_ratios) == len(mlp_ratios)
        assert global_pool in ('avg', '')
        del linear  # the official model stores it and never reads it
        for i in range(num_stages - 1):
            if sr_ratios[i] > 1 and depths[i] % 2:
                raise ValueError(f'stage {i} alternates hybrid-scale and self-guided blocks: depth must be even, got {depths[i]}')
        dd = dict(device=device, dtype=dtype)
        norm_layer = _resolve_norm_layer(norm_layer)
        self.num_classes = num_classes
        self.global_pool = global_pool
        self.num_features = self.head_hidden_size = embed_dims[-1]
        self.embed_dims = tuple(embed_dims)
        self.sr_ratios = tuple(sr_ratios)
        self.drop_rate = drop_rate

        self.stem = Stem(in_chans, embed_dims[0], **dd)
        img_size = to_2tuple(img_size)
        self.grid_size = (img_size[0] // 4, img_size[1] // 4)
        # Trainable, initialised to the 2-D sin-cos table (the official "fixed" comment notwithstanding).
        self.pos_embed = nn.Parameter(torch.zeros(1, self.grid_size[0] * self.grid_size[1], embed_dims[0], **dd))

        dpr = calculate_drop_path_rates(drop_path_rate, depths, stagewise=True)  # per block, rising over all
        stages = []
        for i in range(num_stages):
            stages.append(SGFormerStage(
                dim_in=embed_dims[max(i - 1, 0)],
                dim=embed_dims[i],
                depth=depths[i],
                num_heads=num_heads[i],
                sr_ratio=sr_ratios[i],
                downsample=i > 0,
                guided=i < num_stages - 1,
                mlp_ratio=mlp_ratios[i],
                qkv_bias=qkv_bias,
                qk_scale=qk_scale,
                proj_drop=proj_drop_rate,
                attn_drop=attn_drop_rate,
                drop_path=dpr[i],
                norm_layer=norm_layer,
                **dd,
            ))
        self.stages = nn.Sequential(*stages)
        self.feature_info = [
            dict(num_chs=embed_dims[i], reduction=4 * 2 ** i, module=f'stages.{i}') for i in range(num_stages)
        ]

        self.head_drop = nn.Dropout(drop_rate)
        self.head = nn.Linear(embed_dims[-1], num_classes, **dd) if num_classes > 0 else nn.Identity()
        if device is None or torch.device(device).type != 'meta':
            self.init_weights()

    @torch.no_grad()
    def init_weights(self) -> None:
        """Official init: trunc-normal(0.02) Linear, He-normal (fan_out) convs, unit norms, sin-cos pos_embed.
        Safe to call after `to_empty()` (meta-device build)."""
        self.apply(_init_weights)
        self.pos_embed.copy_(sincos_pos_embed(self.pos_embed.shape[-1], self.grid_size))

    @torch.jit.ignore
    def no_weight_decay(self) -> set[str]:
        return {'pos_embed'}

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> dict:
        return dict(
            stem=r'^stem|^pos_embed',
            blocks=r'^stages\.(\d+)' if coarse else [
                (r'^stages\.(\d+)\.blocks\.(\d+)', None),
                (r'^stages\.(\d+)\.downsample', (0,)),
                (r'^stages\.(\d+)\.norm', (99999,)),
            ],
        )

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Checkpoint every block (stages hold the flag: the significance map passes between blocks)."""
        for stage in self.stages:
            stage.grad_checkpointing = enable

    @torch.jit.ignore
    def get_classifier(self) -> nn.Module:
        return self.head

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        self.num_classes = num_classes
        if global_pool is not None:
            assert global_pool in ('avg', '')
            self.global_pool = global_pool
        ref = self.pos_embed
        self.head = nn.Linear(self.num_features, num_classes, device=ref.device, dtype=ref.dtype) if num_classes > 0 else nn.Identity()
        if num_classes > 0:
            _init_weights(self.head)

    def _pos_embed(self, x: torch.Tensor) -> torch.Tensor:
        return add_pos_embed(x, self.pos_embed, self.grid_size)

    def forward_intermediates(
            self,
            x: torch.Tensor,
            indices: int | list[int] | tuple[int, ...] | None = None,
            norm: bool = False,
            stop_early: bool = False,
            output_fmt: str = 'NCHW',
            intermediates_only: bool = False,
    ) -> list[torch.Tensor] | tuple[torch.Tensor, list[torch.Tensor]]:
        """Forward features that also returns the outputs of the selected stages.

        Args:
            x: `B, 3, H, W` image (H, W multiples of 32).
            indices: Stages to take (0..3, strides 4..32): the last n if int, all if None, these if a
                sequence (negative indices count from the end).
            norm: Accepted for the timm API; changes nothing. Every stage ends with its own norm,
                which also feeds the next stage (as in PVT-v2), so all intermediates are normalized.
            stop_early: Stop after the last stage taken; the returned final features are then
                that stage's output.
            output_fmt: 'NCHW' (channels-last views, no copy) or 'NHWC' for the intermediates.
            intermediates_only: Only return the intermediates.

        Returns:
            The intermediates, or (final `B, h, w, C` NHWC features as `forward_features`, intermediates).
        """
        assert output_fmt in ('NCHW', 'NHWC'), 'Output format must be one of NCHW, NHWC.'
        intermediates = []
        take_indices, max_index = feature_take_indices(len(self.stages), indices)

        x = self._pos_embed(self.stem(x))
        if torch.jit.is_scripting() or not stop_early:  # can't slice blocks in torchscript
            stages = self.stages
        else:
            stages = self.stages[:max_index + 1]
        for i, stage in enumerate(stages):
            x = stage(x)
            if i in take_indices:
                intermediates.append(_nchw(x) if output_fmt == 'NCHW' else x)

        if intermediates_only:
            return intermediates
        return x, intermediates

    def prune_intermediate_layers(
            self,
            indices: int | list[int] | tuple[int, ...] = 1,
            prune_norm: bool = False,
            prune_head: bool = True,
    ) -> list[int]:
        """Drop the stages after the last one `indices` selects (and the head).

        Args:
            indices: Stages to keep features of, as in `forward_intermediates`.
            prune_norm: Accepted for the timm API; changes nothing (the norms belong to the stages,
                see `forward_intermediates`).
            prune_head: Remove the classifier (and pooling); always done when stages are dropped,
                since the head is sized for the last stage.

        Returns:
            The absolute indices of the stages to take.
        """
        take_indices, max_index = feature_take_indices(len(self.stages), indices)
        prune_end = max_index < len(self.stages) - 1
        self.stages = self.stages[:max_index + 1]  # truncate stages
        if prune_end:
            # features now end at the last kept stage, the head is sized for the final features so it goes too
            self.num_features = self.head_hidden_size = self.feature_info[max_index]['num_chs']
        if prune_head or prune_end:
            self.reset_classifier(0, '')
        return take_indices

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """`B, 3, H, W` image (H, W multiples of 32) -> `B, H/32, W/32, C` normed features (NHWC)."""
        x = self._pos_embed(self.stem(x))
        return self.stages(x)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """`B, h, w, C` NHWC features -> logits (`B, C` pooled features with `pre_logits`, or the
        NHWC map itself when `global_pool=''` and there is no classifier)."""
        if self.global_pool == 'avg':
            x = x.mean(dim=(1, 2))
        x = self.head_drop(x)
        return x if pre_logits else self.head(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    @torch.no_grad()
    def significance_maps(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Significance maps of a batch, keyed by the self-guided block that consumes each one.

        Returns:
            `{'stages.{i}.blocks.{j}': B, H_i, W_i}`, where block j sorts the stage's tokens by the
            map; `band_index(map, model.sr_ratios[i])` gives each token's band.
        """
        maps: dict[str, torch.Tensor] = {}
        handles = []
        for i, stage in enumerate(self.stages):
            for j, blk in enumerate(stage.blocks):
                if blk.attn_type == 'hybrid' and j + 1 < len(stage.blocks):
                    name = f'stages.{i}.blocks.{j + 1}'
                    handles.append(blk.register_forward_hook(partial(_keep_significance, maps, name)))
        try:
            self.forward_features(x)
        finally:
            for handle in handles:
                handle.remove()
        return maps


def _keep_significance(store: dict, name: str, module: nn.Module, args, output) -> None:
    store[name] = output[1]


def _init_weights(module: nn.Module) -> None:
    if isinstance(module, nn.Linear):
        trunc_normal_(module.weight, std=.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, (nn.LayerNorm, nn.GroupNorm)):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)
    elif isinstance(module, nn.Conv2d):
        fan_out = module.kernel_size[0] * module.kernel_size[1] * module.out_channels // module.groups
        nn.init.normal_(module.weight, 0, math.sqrt(2.0 / fan_out))
        if module.bias is not None:
            nn.init.zeros_(module.bias)


def _unwrap_checkpoint(checkpoint: dict) -> dict[str, torch.Tensor]:
    """Pick the weights out of a training checkpoint (EMA first, as the official eval does) and
    strip DistributedDataParallel's `module.` prefix."""
    for key in ('state_dict_ema', 'model_ema', 'state_dict', 'model'):
        if isinstance(checkpoint.get(key), dict):
            checkpoint = checkpoint[key]
            break
    return {k.removeprefix('module.'): v for k, v in checkpoint.items()}


def _official_key(key: str) -> str:
    """Rename an official key to this implementation's (attention internals handled separately)."""
    key = re.sub(r'^patch_embed1\.', 'stem.', key)
    key = re.sub(r'^patch_embed(\d+)\.', lambda m: f'stages.{int(m.group(1)) - 1}.downsample.', key)
    key = re.sub(r'^block(\d+)\.', lambda m: f'stages.{int(m.group(1)) - 1}.blocks.', key)
    key = re.sub(r'^norm(\d+)\.', lambda m: f'stages.{int(m.group(1)) - 1}.norm.', key)
    key = re.sub(r'\.c\.(weight|bias)$', r'.conv.\1', key)
    key = re.sub(r'\.bn\.(weight|bias)$', r'.norm.\1', key)
    key = key.replace('.mlp.dwconv.dwconv.', '.mlp.dwconv.')
    return key


def _convert_attention(prefix: str, sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Official attention weights under `prefix` -> this implementation's names and layouts."""
    get = lambda name: {p: sd[f'{prefix}{name}.{p}'] for p in ('weight', 'bias') if f'{prefix}{name}.{p}' in sd}
    out = {}
    if f'{prefix}sr.weight' in sd:  # hybrid-scale: q1 | q2 stacked; kv1 -> kv_global, kv2 -> kv_local
        for p, q1 in get('q1').items():
            out[f'q.{p}'] = torch.cat([q1, get('q2')[p]])
        for name, new in (('kv1', 'kv_global'), ('kv2', 'kv_local'), ('sr', 'sr'), ('norm', 'sr_norm')):
            out.update({f'{new}.{p}': t for p, t in get(name).items()})
    elif f'{prefix}f1.weight' in sd:  # self-guided: kv1 (first half of heads) and kv2 stacked as k | v
        for p, kv1 in get('kv1').items():
            k1, v1 = kv1.chunk(2)
            k2, v2 = get('kv2')[p].chunk(2)
            out[f'kv.{p}'] = torch.cat([k1, k2, v1, v2])
        for i, name in enumerate(('f1', 'f2', 'f3')):
            out.update({f'band_merge.{i}.{p}': t for p, t in get(name).items()})
        out.update({f'q.{p}': t for p, t in get('q').items()})
    else:  # global
        for name in ('q', 'kv'):
            out.update({f'{name}.{p}': t for p, t in get(name).items()})
    for name in ('lepe_linear', 'lepe_conv', 'proj'):
        out.update({f'{name}.{p}': t for p, t in get(name).items()})
    return {prefix + k: v for k, v in out.items()}


def checkpoint_filter_fn(state_dict: dict, model: SGFormer) -> dict[str, torch.Tensor]:
    """Map an official SG-Former checkpoint (or its `state_dict` / `state_dict_ema`, with or without
    `module.` prefixes) onto `model`, resampling `pos_embed` to the model's grid."""
    state_dict = _unwrap_checkpoint(state_dict)
    if not any(k.startswith('stages.') for k in state_dict):
        attn_prefixes = sorted({k[:k.index('attn.') + 5] for k in state_dict if '.attn.' in k})
        converted = {}
        for prefix in attn_prefixes:
            converted.update(_convert_attention(prefix, state_dict))
        renamed = {k: v for k, v in state_dict.items() if '.attn.' not in k}
        renamed.update(converted)
        state_dict = {_official_key(k): v for k, v in renamed.items()}
    pos_embed = state_dict.get('pos_embed')
    if pos_embed is not None and pos_embed.shape != model.pos_embed.shape:
        old = int(math.isqrt(pos_embed.shape[1]))
        state_dict['pos_embed'] = resample_abs_pos_embed(pos_embed, model.grid_size, (old, old), num_prefix_tokens=0)
    return state_dict


def load_official_checkpoint(path: str, map_location: str | torch.device = 'cpu') -> dict:
    """Load an official training checkpoint (`weights_only=True`, nothing but `Namespace` allow-listed).

    Official checkpoints (timm 0.3.4 `CheckpointSaver`) pickle the run's argparse `Namespace` next
    to the weights. It is allowed for this call only: a process-wide `add_safe_globals` would be
    undone by the first `safe_globals([Namespace])` block to exit (timm's own loader has one).
    """
    with torch.serialization.safe_globals([argparse.Namespace]):
        return torch.load(path, map_location=map_location, weights_only=True)


def _create_sgformer(variant: str, pretrained: bool = False, **kwargs) -> SGFormer:
    default_out_indices = tuple(range(len(kwargs.get('depths', (2, 4, 16, 1)))))
    out_indices = kwargs.pop('out_indices', default_out_indices)
    feature_cls = kwargs.get('feature_cls', 'getter')
    if kwargs.get('features_only', False) and (
            (isinstance(feature_cls, str) and feature_cls.lower() in ('list', 'dict'))
            or (isinstance(feature_cls, type) and issubclass(feature_cls, FeatureDictNet))):
        raise ValueError(
            f'SG-Former features_only does not support feature_cls={feature_cls!r}: it rebuilds the network from '
            'its child modules and would skip pos_embed. Use "getter" (default, NCHW), "hook" or "fx" (NHWC).')
    return build_model_with_cfg(
        SGFormer,
        variant,
        pretrained,
        pretrained_filter_fn=checkpoint_filter_fn,
        feature_cfg=dict(out_indices=out_indices, feature_cls='getter'),
        **kwargs,
    )


def _cfg(url: str = '', **kwargs) -> dict:
    # The official eval transform (timm 0.3.4 `_cfg`): resize 248 -> centre crop 224, bicubic, ImageNet mean/std.
    # Any input with sides multiples of 32 runs (see the module docstring). No license is claimed: the
    # official repository publishes none for its code or weights.
    return {
        'url': url,
        'num_classes': 1000,
        'input_size': (3, 224, 224),
        'pool_size': (7, 7),
        'fixed_input_size': False,
        'crop_pct': 0.9,
        'interpolation': 'bicubic',
        'mean': IMAGENET_DEFAULT_MEAN,
        'std': IMAGENET_DEFAULT_STD,
        'first_conv': 'stem.conv.0.conv',
        'classifier': 'head',
        'paper_ids': 'arXiv:2308.12216',
        'paper_name': 'SG-Former: Self-guided Transformer with Evolving Token Reallocation',
        'origin_url': 'https://github.com/OliverRensu/SG-Former',
        **kwargs,
    }


default_cfgs = generate_default_cfgs({
    'sgformer_nano.untrained': _cfg(),
    'sgformer_tiny.untrained': _cfg(),
    'sgformer_s.in1k': _cfg(),
    'sgformer_m.in1k': _cfg(),
    'sgformer_b.in1k': _cfg(),
})


@register_model
def sgformer_nano(pretrained: bool = False, **kwargs) -> SGFormer:
    """CPU-sized SG-Former (0.65M params at 1000 classes), the official fixture's configuration."""
    model_args = dict(embed_dims=(16, 32, 64, 128), num_heads=(2, 2, 4, 4), depths=(2, 2, 2, 1))
    return _create_sgformer('sgformer_nano', pretrained=pretrained, **dict(model_args, **kwargs))


@register_model
def sgformer_tiny(pretrained: bool = False, **kwargs) -> SGFormer:
    """CPU-sized SG-Former (2.7M params at 1000 classes): every block type, narrower and shallower than S."""
    model_args = dict(embed_dims=(32, 64, 128, 256), num_heads=(2, 2, 4, 8), depths=(2, 2, 4, 1))
    return _create_sgformer('sgformer_tiny', pretrained=pretrained, **dict(model_args, **kwargs))


@register_model
def sgformer_s(pretrained: bool = False, **kwargs) -> SGFormer:
    """SG-Former-S (22.5M params), the official ImageNet-1k model."""
    model_args = dict(embed_dims=(64, 128, 256, 512), num_heads=(2, 4, 8, 16), depths=(2, 4, 16, 1))
    return _create_sgformer('sgformer_s', pretrained=pretrained, **dict(model_args, **kwargs))


@register_model
def sgformer_m(pretrained: bool = False, **kwargs) -> SGFormer:
    """SG-Former-M (38.7M params), the official ImageNet-1k model."""
    model_args = dict(embed_dims=(64, 128, 256, 512), num_heads=(2, 4, 8, 16), depths=(2, 6, 28, 2))
    return _create_sgformer('sgformer_m', pretrained=pretrained, **dict(model_args, **kwargs))


@register_model
def sgformer_b(pretrained: bool = False, **kwargs) -> SGFormer:
    """SG-Former-B (78.0M params), the official ImageNet-1k model."""
    model_args = dict(embed_dims=(96, 192, 384, 768), num_heads=(4, 6, 12, 24), depths=(4, 6, 24, 2))
    return _create_sgformer('sgformer_b', pretrained=pretrained, **dict(model_args, **kwargs))
