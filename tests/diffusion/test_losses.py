"""Denoising score matching (M5) and the noise-level sampler."""

import pytest
import torch
from torch import nn

from didr.diffusion.denoiser import Denoiser, X0Denoiser
from didr.diffusion.losses import dsm_loss, sample_times
from didr.diffusion.mixture import GaussianMixture, MixtureDenoiser
from didr.diffusion.schedules import FlowMatchingSchedule, VPCosineSchedule

MIX = GaussianMixture.ring(n_modes=4, radius=2.0, std=0.4)


class Perturbed(Denoiser):
    def __init__(self, base, delta):
        super().__init__(base.schedule)
        self.base, self.delta = base, delta

    def forward(self, x_t, t, cond=None):
        return self.base(x_t, t, cond) + self.delta


def test_dsm_is_minimised_by_the_posterior_mean():
    """(M5) is E||D - E[x0|x_t]||^2 + const, so a constant offset delta adds exactly delta^2
    (per dimension) to the loss at the exact denoiser, up to Monte-Carlo error."""
    schedule = VPCosineSchedule()
    exact = MixtureDenoiser(MIX, schedule)
    g = torch.Generator().manual_seed(0)
    n = 20000
    x0 = MIX.sample(n, generator=g)
    t = sample_times(n, schedule, generator=g)
    eps = torch.randn(n, 2, generator=g, dtype=torch.float64)
    base = float(dsm_loss(exact, x0, t, noise=eps).mean())
    for delta in (0.1, -0.3):
        worse = float(dsm_loss(Perturbed(exact, delta), x0, t, noise=eps).mean())
        assert worse > base
        assert worse - base == pytest.approx(delta**2, abs=0.2 * delta**2)
    # shrinking towards zero is also worse
    shrink = Perturbed(exact, 0.0)
    shrink.forward = lambda x_t, t, cond=None: 0.9 * exact(x_t, t, cond)
    assert float(dsm_loss(shrink, x0, t, noise=eps).mean()) > base + 1e-3


def test_dsm_hand_computed_and_weighted():
    """A denoiser returning x_t has per-sample error mean_d ((a - 1) x0 + s eps)^2; lambda(t) multiplies it."""
    schedule = VPCosineSchedule()
    ident = X0Denoiser(lambda x, tm, c: x, schedule)
    x0, eps, t = torch.randn(5, 3, 2, 2), torch.randn(5, 3, 2, 2), torch.rand(5)
    a, s = schedule.alpha(t)[:, None, None, None], schedule.sigma(t)[:, None, None, None]
    expected = (((a - 1) * x0 + s * eps) ** 2).reshape(5, -1).mean(1)
    torch.testing.assert_close(dsm_loss(ident, x0, t, noise=eps), expected)
    weighting = lambda sched, tt: 1 + 10 * tt  # noqa: E731
    torch.testing.assert_close(dsm_loss(ident, x0, t, noise=eps, weighting=weighting), (1 + 10 * t) * expected)


def test_dsm_gradient_reaches_the_denoiser_not_the_data():
    """The TA tracks the generator's samples but never pushes on them (x0 is detached in M5)."""
    schedule = VPCosineSchedule()
    den = X0Denoiser(nn.Linear(3, 3), schedule)
    den.net = _TimeIgnoring(den.net)
    x0 = torch.randn(8, 3, requires_grad=True)
    dsm_loss(den, x0, torch.rand(8)).mean().backward()
    assert x0.grad is None
    assert den.net.lin.weight.grad is not None and den.net.lin.weight.grad.abs().sum() > 0


class _TimeIgnoring(nn.Module):
    def __init__(self, lin):
        super().__init__()
        self.lin = lin

    def forward(self, x, t, cond):
        return self.lin(x)


def test_sample_times_range_and_flow_shift():
    vp = VPCosineSchedule()
    t = sample_times(50000, vp, generator=torch.Generator().manual_seed(0))
    assert float(t.min()) >= vp.t_min and float(t.max()) <= vp.t_max
    assert float(t.mean()) == pytest.approx((vp.t_min + vp.t_max) / 2, abs=0.01)
    fixed = sample_times(4, vp, t_min=0.3, t_max=0.3)
    torch.testing.assert_close(fixed, torch.full((4,), 0.3))
    # flow matching over its whole range: uniform times pass through the shift
    flow = FlowMatchingSchedule(shift=3.0)
    shifted = sample_times(1000, flow, generator=torch.Generator().manual_seed(1))
    lo, hi = flow.unshift_time(torch.tensor(flow.t_min)), flow.unshift_time(torch.tensor(flow.t_max))
    u = lo + (hi - lo) * torch.rand(1000, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(shifted, flow.shift_time(u))
    assert float(shifted.median()) > 0.6  # shift 3 puts the median near 0.75


def test_flow_shift_round_trip():
    flow = FlowMatchingSchedule(shift=3.0)
    t = torch.linspace(0, 1, 101)
    torch.testing.assert_close(flow.unshift_time(flow.shift_time(t)), t)
    assert float(flow.shift_time(torch.tensor(0.4))) == pytest.approx(2 / 3)  # 3 * 0.4 / (1 + 2 * 0.4)


def test_time_range_is_in_the_schedules_own_time():
    """t_min / t_max bound the t that alpha and sigma see, after the shift, and the times keep the
    shifted density: with u = shift^-1(t) uniform on [shift^-1(t_min), shift^-1(t_max)],
    P(T <= x) = (shift^-1(x) - shift^-1(t_min)) / (shift^-1(t_max) - shift^-1(t_min))."""
    flow = FlowMatchingSchedule(shift=3.0)
    t = sample_times(20000, flow, t_min=0.1, t_max=0.4, generator=torch.Generator().manual_seed(2))
    assert float(t.min()) >= 0.1 - 1e-6 and float(t.max()) <= 0.4 + 1e-6
    assert float(t.max()) > 0.39 and float(t.min()) < 0.11
    inv = flow.unshift_time
    x = torch.linspace(0.1, 0.4, 31)
    cdf = (inv(x) - inv(torch.tensor(0.1))) / (inv(torch.tensor(0.4)) - inv(torch.tensor(0.1)))
    empirical = (t[None, :] <= x[:, None]).float().mean(1)
    assert float((empirical - cdf).abs().max()) < 0.015  # Kolmogorov-Smirnov, n = 20000
    # not the density of the unshifted range: that is uniform on [0.1, 0.4]
    assert float((empirical - (x - 0.1) / 0.3).abs().max()) > 0.05


def test_ta_weighting_choice():
    """``native`` leaves the denoiser's own weighting, ``x0`` is plain x0-space regression."""
    from didr.diffusion.losses import TA_WEIGHTINGS, dsm_weighting
    from didr.errors import ConfigError
    from didr.models.mlp import MLPDenoiser

    schedule = VPCosineSchedule()
    torch.manual_seed(0)
    den = MLPDenoiser(schedule, 2, 16, 2, sigma_data=0.6)
    x0, eps, t = torch.randn(64, 2), torch.randn(64, 2), torch.rand(64) * 0.9 + 0.05
    with torch.no_grad():
        plain = ((den(schedule.add_noise(x0, t, eps), t) - x0) ** 2).mean(1)
        torch.testing.assert_close(dsm_loss(den, x0, t, noise=eps, weighting=dsm_weighting("x0")), plain)
        torch.testing.assert_close(dsm_loss(den, x0, t, noise=eps, weighting=dsm_weighting("native")), den.dsm_weight(t) * plain)
    assert set(TA_WEIGHTINGS) == {"native", "x0"}
    with pytest.raises(ConfigError, match="unknown TA weighting 'eps'"):
        dsm_weighting("eps")


def test_builtin_networks_keep_their_edm_weighting():
    """The toy's MLP and the digits UNet train (reference and TA) with EDM's lambda = 1 / c_out^2,
    as when their results were recorded: the native weighting of the diffusers adapters does not
    reach them."""
    from didr.diffusion.losses import dsm_weighting
    from didr.models.mlp import MLPDenoiser
    from didr.models.unet import UNetDenoiser
    from didr.train.config import TrainConfig

    schedule = VPCosineSchedule()
    t = torch.tensor([0.01, 0.2, 0.5, 0.9])
    torch.manual_seed(0)
    for den, x0 in ((MLPDenoiser(schedule, 1, 16, 2, sigma_data=0.7), torch.randn(4, 1)),
                    (UNetDenoiser(schedule, 10, (8, 16), 1, sigma_data=0.7), torch.randn(4, 1, 8, 8))):
        a, s = schedule.alpha(t), schedule.sigma(t)
        edm = (a**2 * 0.49 + s**2) / (s * 0.7) ** 2
        torch.testing.assert_close(den.dsm_weight(t), edm)
        eps, cond = torch.randn_like(x0), None
        with torch.no_grad():
            plain = ((den(schedule.add_noise(x0, t, eps), t, cond) - x0) ** 2).reshape(4, -1).mean(1)
            got = dsm_loss(den, x0, t, cond, noise=eps, weighting=dsm_weighting(TrainConfig().ta_weighting))
        torch.testing.assert_close(got, edm * plain)
