"""Optimizer groups, lr scaling and the warmup + cosine schedule."""
import timm
import pytest

import sgformer.models  # noqa: F401  (registers the sgformer_* models with timm)
from sgformer.config import resolve_variant
from sgformer.train.optim import create_ema, create_optimizer, create_scheduler, floating_state, update_ema_

NANO = resolve_variant('sgformer_nano', lr=1e-3, weight_decay=0.05)


def test_no_weight_decay_for_norms_biases_and_pos_embed():
    model = timm.create_model('sgformer_nano')
    optimizer = create_optimizer(model, NANO)
    names = {id(p): n for n, p in model.named_parameters()}
    decayed = {names[id(p)] for g in optimizer.param_groups if g['weight_decay'] > 0 for p in g['params']}
    plain = {names[id(p)] for g in optimizer.param_groups if g['weight_decay'] == 0 for p in g['params']}
    assert 'pos_embed' in plain
    assert all(model.get_parameter(n).ndim > 1 for n in decayed)
    assert all(model.get_parameter(n).ndim <= 1 or n == 'pos_embed' for n in plain)
    assert 'stages.0.blocks.1.attn.band_merge.0.weight' in decayed
    assert len(decayed) + len(plain) == len(names)


def test_warmup_then_cosine_per_step():
    model = timm.create_model('sgformer_nano')
    variant = resolve_variant('sgformer_nano', lr=1e-3, epochs=10, warmup_epochs=1, warmup_lr=1e-6, min_lr=1e-5)
    optimizer = create_optimizer(model, variant)
    scheduler = create_scheduler(optimizer, variant, steps_per_epoch=10)
    lrs = []
    for step in range(101):
        scheduler.step_update(step)
        lrs.append(optimizer.param_groups[0]['lr'])
    assert lrs[0] == pytest.approx(1e-6)
    assert lrs[5] == pytest.approx(1e-6 + (1e-3 - 1e-6) * 0.5)
    assert lrs[10] == pytest.approx(1e-3)
    assert all(a >= b for a, b in zip(lrs[10:], lrs[11:]))
    assert lrs[100] == pytest.approx(1e-5)


def test_ema_warmup_ramps_decay():
    model = timm.create_model('sgformer_nano')
    ema = create_ema(model, resolve_variant('sgformer_nano', ema_decay=0.99992, ema_warmup=True))
    assert ema.get_decay(10) < 0.9 < ema.get_decay(100_000) <= 0.99992
    assert create_ema(model, resolve_variant('sgformer_nano', ema_decay=0.99992, ema_warmup=False)).get_decay(10) == 0.99992


def test_ema_update_matches_timm_and_a_zero_weight_changes_nothing():
    import torch
    torch.manual_seed(0)
    model = timm.create_model('sgformer_nano', num_classes=3)
    ours, reference = (create_ema(model, resolve_variant('sgformer_nano', ema_decay=0.9, ema_warmup=False))
                       for _ in range(2))
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p))
    before = [t.clone() for t in floating_state(ours.module)]
    update_ema_(floating_state(ours.module), floating_state(model), torch.tensor(0.0))  # a skipped step
    assert all(torch.equal(a, b) for a, b in zip(before, floating_state(ours.module)))
    update_ema_(floating_state(ours.module), floating_state(model), torch.tensor(1 - ours.get_decay(5)))
    reference.update(model, step=5)
    for a, b in zip(floating_state(ours.module), floating_state(reference.module)):
        torch.testing.assert_close(a, b)
    assert not all(torch.equal(a, b) for a, b in zip(before, floating_state(ours.module)))


def test_fused_adamw_matches_the_reference_loop():
    """The fused kernel is a speed choice only: three steps land where torch's per-parameter AdamW does."""
    import copy

    import torch
    from timm.optim import create_optimizer_v2

    torch.manual_seed(0)
    fused_model = timm.create_model('sgformer_nano', num_classes=10)
    loop_model, initial = copy.deepcopy(fused_model), copy.deepcopy(fused_model)
    fused = create_optimizer(fused_model, resolve_variant('sgformer_nano', lr=1e-2, weight_decay=0.05))
    loop = create_optimizer_v2(loop_model, opt='adamw', lr=1e-2, weight_decay=0.05, foreach=False)
    assert fused.defaults['fused'] and not loop.defaults.get('fused')
    for _ in range(3):
        # Same random gradients for both (a real backward leaves key biases with rounding-noise
        # gradients, which Adam scales up to lr-sized steps that differ between any two kernels).
        for a, b in zip(fused_model.parameters(), loop_model.parameters()):
            a.grad = torch.randn_like(a)
            b.grad = a.grad.clone()
        fused.step()
        loop.step()
    for (name, a), b in zip(fused_model.named_parameters(), loop_model.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6, msg=name)
    moved = (fused_model.head.weight - initial.head.weight).abs()
    assert moved.mean() > 5e-3  # the weights took lr-sized steps


def test_layer_decay_scales_earlier_groups_lower():
    model = timm.create_model('sgformer_nano', num_classes=10, img_size=64)
    plain = create_optimizer(model, resolve_variant('sgformer_nano', num_classes=10))
    decayed = create_optimizer(model, resolve_variant('sgformer_nano', num_classes=10, layer_decay=0.5))
    assert {g.get('lr_scale', 1.0) for g in plain.param_groups} == {1.0}
    scales = sorted({g['lr_scale'] for g in decayed.param_groups})
    assert scales[-1] == 1.0 and scales[0] < 0.5 ** 3 and len(scales) > 4  # stem far below the head
