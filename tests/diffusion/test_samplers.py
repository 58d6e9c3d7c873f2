"""Samplers against diffusers' schedulers (same network, step for step) and against exact posteriors.

The oracle network is a small fixed random conv net fed diffusers' own timestep convention; our
samplers reach it only through the adapters (``model_time``), so a convention slip shows here.
"""

import pytest
import torch
from diffusers import DDIMScheduler, DDPMScheduler, FlowMatchEulerDiscreteScheduler
from torch import nn

from didr.diffusion.denoiser import EpsDenoiser, FlowDenoiser, VDenoiser
from didr.diffusion.mixture import GaussianMixture, MixtureDenoiser
from didr.diffusion.samplers import (
    ancestral_sample,
    ancestral_step,
    ddim_sample,
    ddim_step,
    flow_euler_sample,
    flow_euler_step,
    time_grid,
)
from didr.diffusion.schedules import FlowMatchingSchedule, VPCosineSchedule, VPDiscreteSchedule

SD = dict(num_train_timesteps=1000, beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012)
N = 1000


class TinyNet(nn.Module):
    """net(x, timestep) with timestep in diffusers' units (0..1000), as a UNet would take it."""

    def __init__(self, channels=2, seed=0):
        super().__init__()
        with torch.random.fork_rng():
            torch.manual_seed(seed)
            self.inp = nn.Conv2d(channels, 8, 3, padding=1)
            self.temb = nn.Linear(6, 8)
            self.out = nn.Conv2d(8, channels, 3, padding=1)

    def forward(self, x, timestep, cond=None):
        t = torch.as_tensor(timestep, dtype=torch.float32).expand(x.shape[0]) / 1000
        freqs = torch.tensor([1.0, 3.0, 7.0])
        emb = torch.cat([torch.sin(t[:, None] * freqs), torch.cos(t[:, None] * freqs)], 1)
        h = torch.nn.functional.silu(self.inp(x) + self.temb(emb)[:, :, None, None])
        return self.out(h) + 0.5 * x


def _noise(seed=0):
    return torch.randn(2, 2, 5, 5, generator=torch.Generator().manual_seed(seed))


def _close(ours, theirs, step):
    torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-4, msg=lambda m: f"step {step}: {m}")


@pytest.mark.parametrize("prediction", ["epsilon", "v_prediction"])
def test_ddim_matches_diffusers_trailing(prediction):
    """Our grid linspace(1, 0) on the SD schedule is diffusers' 'trailing' spacing with a clean end."""
    net, schedule = TinyNet(), VPDiscreteSchedule()
    den = (EpsDenoiser if prediction == "epsilon" else VDenoiser)(net, schedule)
    oracle = DDIMScheduler(**SD, clip_sample=False, set_alpha_to_one=True, timestep_spacing="trailing",
                           prediction_type=prediction)
    oracle.set_timesteps(8)
    ts = schedule.sampling_grid(8)
    torch.testing.assert_close(schedule.model_time(ts[:-1]).round().long(), oracle.timesteps)
    x_ref = x = _noise()
    with torch.no_grad():
        for i, step in enumerate(oracle.timesteps):
            res = oracle.step(net(x_ref, step), step, x_ref, eta=0.0)
            x, x0 = ddim_step(den, x, ts[i], ts[i + 1])
            _close(x0, res.pred_original_sample, i)
            _close(x, res.prev_sample, i)
            x_ref = res.prev_sample
        x_all = ddim_sample(den, _noise(), ts)
    _close(x_all, x_ref, "all")


@pytest.mark.parametrize("alpha_to_one", [True, False])
def test_ddim_matches_diffusers_sd_leading_spacing(alpha_to_one):
    """SD's own config: steps_offset=1, 'leading' spacing (timesteps 981, 961, ..., 1).

    Feeding timestep n as t = (n + 1) / N reproduces diffusers step for step. The last step's
    previous timestep is negative: with set_alpha_to_one=True that is t <= 0, clean data; with
    SD's set_alpha_to_one=False diffusers stops at alphas_cumprod[0] instead, i.e. t = 1 / N.
    """
    net, schedule = TinyNet(seed=1), VPDiscreteSchedule()
    den = EpsDenoiser(net, schedule)
    oracle = DDIMScheduler(**SD, clip_sample=False, set_alpha_to_one=alpha_to_one, steps_offset=1,
                           timestep_spacing="leading")
    oracle.set_timesteps(10)
    assert oracle.timesteps[0] == 901 and oracle.timesteps[-1] == 1
    x_ref = x = _noise(1)
    with torch.no_grad():
        for i, step in enumerate(oracle.timesteps):
            prev = int(step) - N // 10
            if prev < 0 and not alpha_to_one:
                prev = 0
            res = oracle.step(net(x_ref, step), step, x_ref, eta=0.0)
            x, _ = ddim_step(den, x, schedule.t_from_timestep(step), schedule.t_from_timestep(prev))
            _close(x, res.prev_sample, i)
            x_ref = res.prev_sample
    if not alpha_to_one:
        # the last state is still (slightly) noisy: it is not the denoised estimate
        x0 = den(x_ref, schedule.t_from_timestep(1))
        assert (x_ref - x0).abs().max() > 1e-3


@pytest.mark.parametrize("sampler", ["euler", "ddim"])
def test_flow_samplers_match_diffusers_flow_euler(sampler):
    """FlowMatchEulerDiscreteScheduler with shift 3: the net sees timestep = 1000 sigma through the
    adapter; Euler on u and DDIM on (a, s) = (1 - t, t) are the same update."""
    net = TinyNet(seed=2)
    schedule = FlowMatchingSchedule(shift=3.0, time_scale=1000.0)
    den = FlowDenoiser(net, schedule)
    oracle = FlowMatchEulerDiscreteScheduler(num_train_timesteps=N, shift=3.0)
    oracle.set_timesteps(6)
    ts = oracle.sigmas
    x_ref = x = _noise(2)
    with torch.no_grad():
        for i, step in enumerate(oracle.timesteps):
            x_ref = oracle.step(net(x_ref, step), step, x_ref).prev_sample
            if sampler == "euler":
                x = flow_euler_step(den, x, ts[i], ts[i + 1])
            else:
                x, _ = ddim_step(den, x, ts[i], ts[i + 1])
            _close(x, x_ref, i)
        whole = (flow_euler_sample if sampler == "euler" else ddim_sample)(den, _noise(2), list(ts))
    _close(whole, x_ref, "all")


def test_ancestral_step_matches_diffusers_ddpm():
    """ancestral_step is the DDPM posterior step (fixed_small variance), same noise draws."""
    net, schedule = TinyNet(seed=3), VPDiscreteSchedule()
    den = EpsDenoiser(net, schedule)
    oracle = DDPMScheduler(**SD, clip_sample=False, variance_type="fixed_small")
    oracle.set_timesteps(10)
    g_ref, g_ours = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    x_ref = x = _noise(3)
    with torch.no_grad():
        for i, step in enumerate(oracle.timesteps):
            prev = oracle.previous_timestep(step)
            x_ref = oracle.step(net(x_ref, step), step, x_ref, generator=g_ref).prev_sample
            x = ancestral_step(den, x, schedule.t_from_timestep(step), schedule.t_from_timestep(prev), generator=g_ours)
            _close(x, x_ref, i)


def test_per_sample_times_match_separate_runs():
    """Each sample may start at its own t (used by DRP, M12): same result as running it alone."""
    net = TinyNet(seed=4)
    den = EpsDenoiser(net, VPCosineSchedule())
    x = _noise(4)
    t0 = torch.tensor([0.3, 0.9])
    with torch.no_grad():
        together = ddim_sample(den, x, time_grid(t0, 5))
        for i in range(2):
            alone = ddim_sample(den, x[i : i + 1], time_grid(float(t0[i]), 5))
            torch.testing.assert_close(together[i : i + 1], alone, rtol=1e-6, atol=1e-6)


def test_time_grid():
    grid = time_grid(torch.tensor([0.4, 1.0]), 4)
    assert len(grid) == 5
    torch.testing.assert_close(grid[0], torch.tensor([0.4, 1.0]))
    assert (grid[-1] == 0).all()
    torch.testing.assert_close(grid[2], torch.tensor([0.2, 0.5]))


def test_ddim_follows_gaussian_probability_flow():
    """On one Gaussian N(mu, sigma^2) the probability-flow map from x_t to x_0 is affine:
    x_0 = mu + sigma / sqrt(a^2 sigma^2 + s^2) (x_t - a mu); many DDIM steps converge to it."""
    mu, sigma = 1.5, 0.6
    schedule = VPCosineSchedule()
    den = MixtureDenoiser(GaussianMixture([mu], [sigma], [1.0]), schedule)
    t = 0.7
    a, s = float(schedule.alpha(torch.tensor(t))), float(schedule.sigma(torch.tensor(t)))
    x_t = torch.linspace(-3, 3, 7, dtype=torch.float64)[:, None]
    exact = mu + sigma / (a**2 * sigma**2 + s**2) ** 0.5 * (x_t - a * mu)
    errs = [float((ddim_sample(den, x_t, time_grid(t, k)) - exact).abs().max()) for k in (16, 64)]
    # DDIM is first order: four times the steps, a quarter of the error
    assert errs[1] < 0.05 and 3.5 < errs[0] / errs[1] < 4.5


def test_ancestral_sampler_reproduces_exact_posterior():
    """From x_t at t = 0.4 (a bimodal posterior), many ancestral samples have the mean and variance
    of p(x_0 | x_t) from GaussianMixture.posterior, within Monte-Carlo tolerance."""
    mix = GaussianMixture([-2.0, 2.0], [0.5, 0.5], [0.5, 0.5])
    schedule = VPCosineSchedule()
    den = MixtureDenoiser(mix, schedule)
    t, n = torch.tensor([0.4]), 5000
    x_t = torch.tensor([[0.2]])
    post = mix.posterior(x_t, schedule.alpha(t), schedule.sigma(t))
    mean = float(post.mean())
    var = float((post.weights * (post.variances + post.means[..., 0] ** 2)).sum()) - mean**2
    assert 0.5 < var  # genuinely wide: both modes carry mass
    g = torch.Generator().manual_seed(0)
    x0 = ancestral_sample(den, x_t.double().repeat(n, 1), time_grid(0.4, 100), generator=g)[:, 0]
    se_mean, se_var = (var / n) ** 0.5, var * (2 / n) ** 0.5
    # 4 standard errors, plus a small allowance for the sampler's discretisation
    assert abs(float(x0.mean()) - mean) < 4 * se_mean + 0.01
    assert abs(float(x0.var()) - var) < 4 * se_var + 0.02
    # too few steps shrink the variance: the check above can fail
    x0_coarse = ancestral_sample(den, x_t.double().repeat(n, 1), time_grid(0.4, 5), generator=g)[:, 0]
    assert float(x0_coarse.var()) < var - 0.2
