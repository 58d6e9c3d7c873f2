import copy

import torch

from didr.diffusion.denoiser import GuidedDenoiser
from didr.diffusion.losses import dsm_loss, sample_times
from didr.diffusion.schedules import VPCosineSchedule
from didr.models.unet import OneStepGenerator, UNetDenoiser


def _net(size=8, patch=1, **kw):
    torch.manual_seed(0)
    return UNetDenoiser(VPCosineSchedule(), 10, (8, 16), patch, sigma_data=0.8, **kw), torch.randn(4, 1, size, size)


def test_shapes_for_8x8_and_28x28_with_patch_folding():
    for size, patch in ((8, 1), (28, 2), (28, 4)):
        net, x = _net(size, patch)
        out = net(x, torch.rand(4) * 0.9 + 0.05, torch.randint(0, 10, (4,)))
        assert out.shape == x.shape and torch.isfinite(out).all()


def test_preconditioning_returns_the_input_at_tiny_noise():
    # c_skip -> 1 and c_out -> 0 as s -> 0, so D(x, t) -> x whatever the weights
    net, x = _net()
    out = net(x, torch.full((4,), 1e-5), torch.zeros(4, dtype=torch.long))
    assert torch.allclose(out, x, atol=1e-3)


def test_none_condition_is_the_null_class_and_classes_matter():
    net, x = _net()
    t = torch.full((4,), 0.5)
    null = net.null_cond(torch.zeros(4, dtype=torch.long))
    assert torch.equal(null, torch.full((4,), 10))
    assert torch.allclose(net(x, t, None), net(x, t, null))
    assert not torch.allclose(net(x, t, torch.zeros(4, dtype=torch.long)), net(x, t, torch.ones(4, dtype=torch.long)))


def test_dsm_weight_is_one_over_c_out_squared_and_guidance_runs():
    net, x = _net()
    t = torch.tensor([0.1, 0.5, 0.9])
    a, s = net.schedule.alpha(t), net.schedule.sigma(t)
    c_out = s * 0.8 / (a**2 * 0.64 + s**2).sqrt()
    assert torch.allclose(net.dsm_weight(t), 1 / c_out**2, rtol=1e-5)
    guided = GuidedDenoiser(net, 2.0, net.null_cond)
    c = torch.arange(4)
    tt = torch.full((4,), 0.5)
    expected = net(x, tt, None) + 2.0 * (net(x, tt, c) - net(x, tt, None))
    assert torch.allclose(guided(x, tt, c), expected, atol=1e-5)


def test_short_dsm_training_beats_the_untrained_network():
    net, _ = _net()
    gen = torch.Generator().manual_seed(0)
    data = torch.sign(torch.randn(2, 1, 8, 8, generator=gen))  # two fixed binary images
    x0 = data.repeat(32, 1, 1, 1)
    c = torch.tensor([0, 1]).repeat(32)
    t = sample_times(64, net.schedule, generator=gen)
    noise = torch.randn(x0.shape, generator=gen)
    before = float(dsm_loss(net, x0, t, c, noise=noise).mean().detach())
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    for _ in range(60):
        loss = dsm_loss(net, x0, sample_times(64, net.schedule), c).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    after = float(dsm_loss(net, x0, t, c, noise=noise).mean().detach())
    assert after < 0.5 * before


def test_one_step_generator_is_the_denoiser_at_a_fixed_noise_level():
    net, z = _net()
    c = torch.arange(4)
    g = OneStepGenerator(copy.deepcopy(net), 0.7)
    assert torch.allclose(g(z, c), net(z, torch.full((4,), 0.7), c))
    g(z, c).sum().backward()
    assert all(p.grad is not None for p in g.parameters() if p.requires_grad)
