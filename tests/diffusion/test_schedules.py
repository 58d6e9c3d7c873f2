"""Noise schedules (M1) against their definitions and against diffusers' schedulers as oracles."""

import math

import pytest
import torch
from diffusers import DDPMScheduler, FlowMatchEulerDiscreteScheduler

from didr.diffusion.schedules import (
    EDMSchedule,
    FlowMatchingSchedule,
    VPCosineSchedule,
    VPDiscreteSchedule,
    make_schedule,
)
from didr.errors import ConfigError

SD_BETAS = dict(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012)
N = 1000


@pytest.mark.parametrize("schedule", [VPCosineSchedule(), VPDiscreteSchedule()], ids=["cosine", "discrete"])
def test_vp_is_variance_preserving(schedule):
    """VP schedules of (M1): a^2 + s^2 = 1, clean at t = 0, a decreasing in t."""
    t = torch.linspace(0, 0.999, 1001, dtype=torch.float64)
    a, s = schedule.alpha(t), schedule.sigma(t)
    torch.testing.assert_close(a**2 + s**2, torch.ones_like(a), atol=1e-6, rtol=0)
    assert abs(float(a[0]) - 1) < 1e-6
    assert (a[1:] < a[:-1]).all()


def test_vp_discrete_matches_diffusers_alphas_cumprod():
    """Timestep n sits at t = (n + 1) / N: a(t)^2 is diffusers' alphas_cumprod[n], for every n."""
    oracle = DDPMScheduler(num_train_timesteps=N, **SD_BETAS).alphas_cumprod.to(torch.float64)
    schedule = VPDiscreteSchedule()
    t = (torch.arange(N, dtype=torch.float64) + 1) / N
    torch.testing.assert_close(schedule.alpha(t) ** 2, oracle, rtol=1e-6, atol=0)
    torch.testing.assert_close(schedule.sigma(t) ** 2, 1 - oracle, rtol=1e-5, atol=1e-7)
    # float32 times (what samplers pass) land on the same grid points
    torch.testing.assert_close(schedule.alpha(t.float()) ** 2, oracle.float(), rtol=1e-5, atol=0)


def test_vp_discrete_linear_betas_and_from_diffusers():
    oracle = DDPMScheduler(num_train_timesteps=N, beta_schedule="linear", beta_start=1e-4, beta_end=0.02)
    schedule = VPDiscreteSchedule.from_diffusers(oracle)
    t = (torch.arange(N, dtype=torch.float64) + 1) / N
    torch.testing.assert_close(schedule.alpha(t) ** 2, oracle.alphas_cumprod.to(torch.float64), rtol=1e-6, atol=0)
    with pytest.raises(ConfigError):
        VPDiscreteSchedule(beta_schedule="cosine")


def test_vp_discrete_timestep_convention_round_trips():
    schedule = VPDiscreteSchedule()
    n = torch.tensor([0, 1, 399, 999])
    t = schedule.t_from_timestep(n)
    torch.testing.assert_close(t, (n + 1).float() / N)
    torch.testing.assert_close(schedule.model_time(t), n.float(), atol=1e-4, rtol=0)


def test_vp_discrete_interpolates_between_timesteps():
    """Between grid points log alpha_bar is linear, so mid-points are geometric means."""
    schedule = VPDiscreteSchedule()
    abar = schedule.alphas_cumprod
    t_mid = torch.tensor([(10 + 1.5) / N], dtype=torch.float64)
    expected = torch.sqrt(abar[10] * abar[11])
    torch.testing.assert_close(schedule.alpha(t_mid) ** 2, expected.reshape(1), rtol=1e-9, atol=0)


def test_vp_discrete_add_noise_matches_diffusers():
    oracle = DDPMScheduler(num_train_timesteps=N, **SD_BETAS)
    schedule = VPDiscreteSchedule()
    g = torch.Generator().manual_seed(0)
    x0, eps = torch.randn(4, 3, 8, 8, generator=g), torch.randn(4, 3, 8, 8, generator=g)
    n = torch.tensor([0, 250, 500, 999])
    ours = schedule.add_noise(x0, schedule.t_from_timestep(n), eps)
    torch.testing.assert_close(ours, oracle.add_noise(x0, eps, n), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("shift", [1.0, 3.0])
def test_flow_shift_matches_diffusers_sigmas(shift):
    """t' = shift t / (1 + (shift - 1) t), as FlowMatchEulerDiscreteScheduler shifts its sigmas."""
    oracle = FlowMatchEulerDiscreteScheduler(num_train_timesteps=N, shift=shift)
    schedule = FlowMatchingSchedule(shift=shift, time_scale=N)
    unshifted = torch.linspace(1, N, N).flip(0) / N
    torch.testing.assert_close(schedule.shift_time(unshifted), oracle.sigmas, rtol=1e-6, atol=1e-7)
    # the inference grid: diffusers shifts linspace(1, sigma_min) and appends 0
    oracle.set_timesteps(8)
    grid = torch.linspace(1.0, oracle.sigma_min, 8, dtype=torch.float64)
    torch.testing.assert_close(schedule.shift_time(grid).float(), oracle.sigmas[:-1], rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(schedule.model_time(oracle.sigmas[:-1]), oracle.timesteps, rtol=1e-6, atol=1e-4)


def test_flow_add_noise_matches_diffusers_scale_noise():
    oracle = FlowMatchEulerDiscreteScheduler(num_train_timesteps=N, shift=3.0)
    oracle.set_timesteps(10)
    schedule = FlowMatchingSchedule(shift=3.0, time_scale=N)
    g = torch.Generator().manual_seed(1)
    x0, eps = torch.randn(1, 4, 6, 6, generator=g), torch.randn(1, 4, 6, 6, generator=g)
    for i in (0, 4, 9):
        expected = oracle.scale_noise(x0, oracle.timesteps[i : i + 1], eps)
        torch.testing.assert_close(schedule.add_noise(x0, oracle.sigmas[i], eps), expected, rtol=1e-6, atol=1e-6)


def test_flow_schedule_definition_and_grid():
    schedule = FlowMatchingSchedule(shift=3.0)
    t = torch.rand(100, dtype=torch.float64)
    torch.testing.assert_close(schedule.alpha(t), 1 - t)
    torch.testing.assert_close(schedule.sigma(t), t)
    grid = schedule.sampling_grid(6)
    assert grid.shape == (7,) and float(grid[0]) == pytest.approx(1.0) and float(grid[-1]) == 0.0
    assert (grid[1:] < grid[:-1]).all()
    # shifting pushes times towards the noisy end
    assert (schedule.shift_time(t) >= t).all()
    with pytest.raises(ConfigError):
        FlowMatchingSchedule(shift=0.0)


def test_edm_schedule():
    schedule = EDMSchedule(sigma_min=0.002, sigma_max=80.0)
    t = torch.tensor([0.0, 0.5, 1.0])
    torch.testing.assert_close(schedule.alpha(t), torch.ones(3))
    torch.testing.assert_close(schedule.sigma(t), torch.tensor([0.002, math.sqrt(0.002 * 80.0), 80.0]))
    torch.testing.assert_close(schedule.model_time(t), schedule.sigma(t))
    with pytest.raises(ConfigError):
        EDMSchedule(sigma_min=1.0, sigma_max=0.5)


def test_add_noise_per_sample_times_broadcast():
    """(M1) with a (B,) time vector acts per sample on (B, C, H, W) data."""
    schedule = VPCosineSchedule()
    x0, eps = torch.randn(3, 2, 4, 4), torch.randn(3, 2, 4, 4)
    t = torch.tensor([0.1, 0.5, 0.9])
    x_t = schedule.add_noise(x0, t, eps)
    for i in range(3):
        expected = schedule.alpha(t[i]) * x0[i] + schedule.sigma(t[i]) * eps[i]
        torch.testing.assert_close(x_t[i], expected)


def test_make_schedule():
    assert isinstance(make_schedule("flow", shift=3.0), FlowMatchingSchedule)
    assert isinstance(make_schedule("vp-discrete"), VPDiscreteSchedule)
    with pytest.raises(ConfigError, match="unknown schedule"):
        make_schedule("karras")
