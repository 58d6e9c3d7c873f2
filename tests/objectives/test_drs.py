"""DRS estimators (M8, M9, M12) against ground truth on Gaussian-mixture references.

ExactMixtureDRS is checked first, against independent quadrature and closed forms; it is then
the reference that DRP and Monte-Carlo are measured against.
"""

import math

import pytest
import torch

from didr.diffusion.mixture import GaussianMixture, MixtureDenoiser
from didr.diffusion.samplers import ddim_sample, time_grid
from didr.diffusion.schedules import FlowMatchingSchedule, VPCosineSchedule
from didr.errors import ConfigError, RewardError
from didr.objectives.drs import DRPEstimator, ExactMixtureDRS, HybridDRS, MonteCarloDRS
from didr.rewards.toy import LinearReward, SigmoidReward, StepReward

MIX = GaussianMixture([-2.0, 2.0], [0.5, 0.5], [0.5, 0.5])
SKEW = GaussianMixture([-2.0, 0.5, 2.5], [0.5, 0.3, 0.8], [0.3, 0.2, 0.5])
VP = VPCosineSchedule()
BETA = 0.72


def _rel(est, exact):
    return float((est.double() - exact.double()).norm() / exact.double().norm())


def _brute_drs(mix, reward, beta, x_t, a, s):
    """(M9) by quadrature on a fine 1-D grid over x_0: q_0(x_0) N(x_t; a x_0, s^2) exp(r / beta)."""
    grid = torch.linspace(-10, 10, 40001, dtype=torch.float64)
    r = reward(grid[:, None].float(), None).double()
    out = []
    for x, aa, ss in zip(x_t[:, 0].double(), a.double(), s.double()):
        logp = mix.log_prob(grid[:, None]) - 0.5 * (x - aa * grid) ** 2 / ss**2
        plain = (torch.softmax(logp, 0) * grid).sum()
        tilted = (torch.softmax(logp + r / beta, 0) * grid).sum()
        out.append(aa / ss**2 * (tilted - plain))
    return torch.stack(out)[:, None]


def _posterior_cov(mix, x_t, a, s):
    """Cov[x_0 | x_t] = sum_k w_k (v_k I + m_k m_k^T) - m m^T."""
    post = mix.posterior(x_t.double(), a.double(), s.double())
    d = post.means.shape[-1]
    second = torch.einsum("bk,bki,bkj->bij", post.weights, post.means, post.means)
    second = second + (post.weights * post.variances).sum(1)[:, None, None] * torch.eye(d, dtype=torch.float64)
    m = post.mean()
    return second - m[:, :, None] * m[:, None, :], m


@pytest.mark.parametrize("schedule", [VP, FlowMatchingSchedule(shift=3.0)], ids=["vp", "flow"])
def test_exact_drs_matches_brute_force_quadrature(schedule):
    reward = SigmoidReward(4.0)
    t = torch.tensor([0.02, 0.1, 0.3, 0.5, 0.7, 0.9, 0.98])
    x_t = torch.tensor([[-1.9], [-0.5], [0.0], [0.3], [1.0], [2.2], [-3.0]])
    ref = MixtureDenoiser(SKEW, schedule)
    exact = ExactMixtureDRS(SKEW, reward, BETA)(ref, x_t, t).drs
    brute = _brute_drs(SKEW, reward, BETA, x_t, schedule.alpha(t), schedule.sigma(t))
    torch.testing.assert_close(exact.double(), brute, rtol=1e-4, atol=1e-6)


def test_exact_drs_linear_reward_on_a_gaussian():
    """r = c x tilts p_ref(x_0 | x_t) = N(m, v) to N(m + c v / beta, v): DRS = a / s^2 c v / beta,
    the same for every x_t; v = 1 / (1 / sigma^2 + a^2 / s^2)."""
    sigma, c, beta = 0.7, 1.5, 0.4
    ref = MixtureDenoiser(GaussianMixture([0.5], [sigma], [1.0]), VP)
    est = ExactMixtureDRS(ref.mixture, LinearReward(c), beta)
    t = torch.tensor([0.05, 0.3, 0.6, 0.9])
    x_t = torch.tensor([[-2.0], [0.0], [1.0], [3.0]])
    a, s = VP.alpha(t).double(), VP.sigma(t).double()
    v = 1 / (1 / sigma**2 + a**2 / s**2)
    torch.testing.assert_close(est(ref, x_t, t).drs.double()[:, 0], a / s**2 * c * v / beta, rtol=1e-5, atol=0)


def _log_h_linear(mix, c, beta, x_t, a, s):
    """log h_t (M7) for r = c x[0] in closed form: sum_k w_k(x_t) exp(c m_k / beta + c^2 v_k / (2 beta^2))."""
    post = mix.posterior(x_t, a, s)
    terms = post.weights.log() + c * post.means[..., 0] / beta + c**2 * post.variances / (2 * beta**2)
    return torch.logsumexp(terms, 1)


@pytest.mark.parametrize("mix", [SKEW, GaussianMixture.ring(5, 2.0, 0.4)], ids=["1d", "2d"])
def test_exact_drs_is_grad_log_h(mix):
    """(M9) (what ExactMixtureDRS computes) equals (M8), grad_x log h_t, by autograd of the closed form."""
    c, beta = 1.2, 0.8
    ref = MixtureDenoiser(mix, VP)
    g = torch.Generator().manual_seed(0)
    t = torch.tensor([0.05, 0.3, 0.6, 0.9])
    x_t = 2 * torch.randn(4, mix.dim, generator=g)
    a, s = VP.alpha(t).double(), VP.sigma(t).double()
    x = x_t.double().requires_grad_(True)
    (grad,) = torch.autograd.grad(_log_h_linear(mix, c, beta, x, a, s).sum(), x)
    drs = ExactMixtureDRS(mix, LinearReward(c), beta)(ref, x_t, t).drs
    torch.testing.assert_close(drs.double(), grad, rtol=1e-5, atol=1e-6)


def test_tilted_score_is_reference_score_plus_drs():
    """(M8): with a linear reward p* is again a mixture (component k shifted by c sigma_k^2 / beta,
    reweighted by exp(c mu_k / beta + c^2 sigma_k^2 / (2 beta^2))), so its exact denoiser must equal
    D_ref + s^2 / a DRS at every x_t and t."""
    c, beta = 1.0, 0.7
    mu, sd = SKEW.means[:, 0], SKEW.stds
    w = torch.softmax(SKEW.weights.log() + c * mu / beta + c**2 * sd**2 / (2 * beta**2), 0)
    tilted = GaussianMixture(mu + c * sd**2 / beta, sd, w)
    ref, star = MixtureDenoiser(SKEW, VP), MixtureDenoiser(tilted, VP)
    t = torch.linspace(0.01, 0.99, 50)
    x_t = torch.linspace(-4, 4, 50)[:, None]
    drs = ExactMixtureDRS(SKEW, LinearReward(c), beta)(ref, x_t, t).drs
    a, s = VP.alpha(t)[:, None], VP.sigma(t)[:, None]
    torch.testing.assert_close(ref(x_t, t) + s**2 / a * drs, star(x_t, t), rtol=1e-5, atol=1e-5)


def test_exact_drs_of_a_direction_reward_in_8d_is_the_tilted_mixtures_denoiser():
    """(M8) in 8-D: with r = w . x the optimum is the mixture of (M14), so D_ref + s^2/a DRS must be
    its exact denoiser; the reward's direction has components off the modes' plane."""
    ring = GaussianMixture.ring(6, 2.0, 0.1)
    mix = GaussianMixture(torch.cat([ring.means, torch.zeros(6, 6, dtype=torch.float64)], 1), ring.stds, ring.weights)
    w, beta = [1.0, 0.5, 0.3, -0.3, 0.2, 0.0, 0.1, 0.4], 0.6
    ref, star = MixtureDenoiser(mix, VP), MixtureDenoiser(mix.linear_tilt(torch.tensor(w, dtype=torch.float64), beta), VP)
    g = torch.Generator().manual_seed(0)
    t = torch.rand(64, generator=g) * 0.9 + 0.05
    x_t = 2 * torch.randn(64, 8, generator=g)
    drs = ExactMixtureDRS(mix, LinearReward(direction=w), beta)(ref, x_t, t).drs
    a, s = VP.alpha(t)[:, None], VP.sigma(t)[:, None]
    torch.testing.assert_close(ref(x_t, t) + s**2 / a * drs, star(x_t, t), rtol=1e-4, atol=1e-4)


def test_direction_nodes_match_the_tensor_grid_in_2d():
    """A sigmoid along a direction: 1-D nodes along w give what the full 2-D grid gives."""
    mix = GaussianMixture.ring(5, 2.0, 0.3)
    reward = SigmoidReward(3.0, direction=[1.0, 1.0])
    plain = lambda x, prompts=None: reward(x)  # noqa: E731  (no direction: the tensor-product grid)
    ref = MixtureDenoiser(mix, VP)
    g = torch.Generator().manual_seed(1)
    t = torch.tensor([0.05, 0.2, 0.5, 0.8])
    x_t = 2 * torch.randn(4, 2, generator=g)
    along = ExactMixtureDRS(mix, reward, BETA)(ref, x_t, t).drs
    grid = ExactMixtureDRS(mix, plain, BETA, nodes=48)(ref, x_t, t).drs
    torch.testing.assert_close(along, grid, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("mix", [MIX, GaussianMixture.ring(4, 2.0, 0.5)], ids=["1d", "2d"])
def test_drp_k1_is_the_first_order_form_of_m9(mix):
    """(M12) with k = 1: grad r(D_ref(x_t)) / beta = a / s^2 Cov[x_0 | x_t] grad r(E[x_0 | x_t]) / beta,
    with the covariance from GaussianMixture.posterior."""
    reward = SigmoidReward(4.0)
    ref = MixtureDenoiser(mix, VP)
    g = torch.Generator().manual_seed(1)
    t = torch.tensor([0.05, 0.2, 0.4, 0.6, 0.8])
    x_t = torch.randn(5, mix.dim, generator=g, dtype=torch.float64)
    est = DRPEstimator(reward, BETA, steps=1)(ref, x_t, t)
    a, s = VP.alpha(t).double(), VP.sigma(t).double()
    cov, mean = _posterior_cov(mix, x_t, a, s)
    m = mean.clone().requires_grad_(True)
    (grad_r,) = torch.autograd.grad(reward(m, None).sum(), m)
    first_order = (a / s**2)[:, None] * torch.einsum("bij,bj->bi", cov, grad_r) / BETA
    torch.testing.assert_close(est.drs, first_order, rtol=1e-6, atol=1e-9)
    torch.testing.assert_close(est.x0_ref, ref(x_t, t))


def test_drp_k1_is_exact_for_a_linear_reward_on_a_gaussian():
    """Posterior covariance is constant in x_t there, so the first-order form has no error."""
    c, beta = 1.5, 0.4
    mix = GaussianMixture([0.5], [0.7], [1.0])
    ref = MixtureDenoiser(mix, VP)
    t, x_t = torch.tensor([0.1, 0.5, 0.9]), torch.tensor([[-1.0], [0.0], [2.0]])
    exact = ExactMixtureDRS(mix, LinearReward(c), beta)(ref, x_t, t).drs
    torch.testing.assert_close(DRPEstimator(LinearReward(c), beta)(ref, x_t, t).drs, exact, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("k", [2, 5])
def test_drp_k_steps_is_the_gradient_through_ddim(k):
    """(M12): grad_x r(Phi_k(x)) / beta, with Phi_k = k DDIM steps to t = 0; central differences of
    r(ddim_sample(...)) in float64 agree, per sample and with per-sample start times."""
    reward = SigmoidReward(2.0)
    ref = MixtureDenoiser(MIX, VP)
    t = torch.tensor([0.2, 0.5, 0.8])
    x_t = torch.tensor([[-0.4], [0.3], [1.1]], dtype=torch.float64)
    drs = DRPEstimator(reward, BETA, steps=k)(ref, x_t, t).drs
    h = 1e-5
    phi = lambda x: reward(ddim_sample(ref, x, time_grid(t, k)), None)  # noqa: E731
    fd = (phi(x_t + h) - phi(x_t - h)) / (2 * h) / BETA
    torch.testing.assert_close(drs[:, 0], fd, rtol=1e-5, atol=1e-8)
    ckpt = DRPEstimator(reward, BETA, steps=k, checkpoint=True)(ref, x_t, t)
    torch.testing.assert_close(ckpt.drs, drs)
    torch.testing.assert_close(ckpt.x0_ref, ref(x_t, t))


def test_drp_gradient_does_not_reach_reference_weights():
    """The gradient flows through the reference's input, never its parameters (M12)."""
    from didr.diffusion.denoiser import X0Denoiser

    net = torch.nn.Linear(1, 1)
    ref = X0Denoiser(lambda x, tm, c: net(x), VP)
    DRPEstimator(SigmoidReward(), BETA, steps=3)(ref, torch.randn(4, 1), torch.full((4,), 0.5))
    assert net.weight.grad is None


def test_monte_carlo_converges_to_exact():
    """(M9) by sampling: relative error shrinks with N (to the ancestral sampler's own bias)."""
    reward = SigmoidReward(4.0)
    ref = MixtureDenoiser(MIX, VP)
    g = torch.Generator().manual_seed(2)
    t = torch.full((8,), 0.6)
    x_t = VP.add_noise(MIX.sample(8, generator=g), t.double(), torch.randn(8, 1, generator=g, dtype=torch.float64)).float()
    exact = ExactMixtureDRS(MIX, reward, BETA)(ref, x_t, t).drs
    err = {n: _rel(MonteCarloDRS(reward, BETA, samples=n, sampler_steps=100, seed=0)(ref, x_t, t).drs, exact)
           for n in (64, 4096)}
    assert err[4096] < 0.06
    assert err[4096] < err[64] / 3


def _step_reward_exact(mix, beta, x_t, a, s):
    """(M9) for r = 1[x > 0]: each posterior component N(m, v) gives E[w] = 1 + (e - 1) Phi(m / sqrt v)
    and E[x w] = m + (e - 1)(m Phi + sqrt(v) phi), with e = exp(1 / beta)."""
    post = mix.posterior(x_t.double(), a.double(), s.double())
    m, v, w = post.means[..., 0], post.variances, post.weights
    z = m / v.sqrt()
    cdf, pdf = 0.5 * torch.erfc(-z / math.sqrt(2)), torch.exp(-(z**2) / 2) / math.sqrt(2 * math.pi)
    e = math.exp(1 / beta)
    tilted = (w * (m + (e - 1) * (m * cdf + v.sqrt() * pdf))).sum(1) / (w * (1 + (e - 1) * cdf)).sum(1)
    return ((a.double() / s.double() ** 2) * (tilted - post.mean()[:, 0]))[:, None]


def test_step_reward_refused_by_drp_accepted_by_monte_carlo():
    with pytest.raises(RewardError, match="no gradient"):
        DRPEstimator(StepReward(), BETA)
    ref = MixtureDenoiser(MIX, VP)
    t, x_t = torch.full((7,), 0.4), torch.linspace(-1.5, 1.5, 7)[:, None]
    mc = MonteCarloDRS(StepReward(), BETA, samples=4096, sampler_steps=100, seed=0)(ref, x_t, t).drs
    exact = _step_reward_exact(MIX, BETA, x_t, VP.alpha(t), VP.sigma(t))
    assert _rel(mc, exact) < 0.1


def test_hybrid_routes_by_noise_level():
    """DRP at t <= t_switch, the other estimator above it, each on its own samples."""
    reward = SigmoidReward(4.0)
    ref = MixtureDenoiser(MIX, VP)
    low, high = DRPEstimator(reward, BETA), ExactMixtureDRS(MIX, reward, BETA)
    t = torch.tensor([0.1, 0.7, 0.3, 0.9])
    x_t = torch.tensor([[0.2], [0.2], [-0.5], [1.0]])
    drs = HybridDRS(low, high, t_switch=0.5)(ref, x_t, t).drs
    lo, hi = t <= 0.5, t > 0.5
    torch.testing.assert_close(drs[lo], low(ref, x_t[lo], t[lo]).drs)
    torch.testing.assert_close(drs[hi], high(ref, x_t[hi], t[hi]).drs)


def test_estimator_config_errors():
    with pytest.raises(ConfigError, match="beta"):
        DRPEstimator(SigmoidReward(), 0.0)
    with pytest.raises(ConfigError, match="steps"):
        DRPEstimator(SigmoidReward(), 1.0, steps=0)
    with pytest.raises(ConfigError):
        MonteCarloDRS(SigmoidReward(), 1.0, samples=1)


def test_monte_carlo_repeats_structured_conditioning():
    """Dict / tuple / list conditioning (diffusers backbones) is repeated row-aligned with x_t."""
    from didr.objectives.drs import _repeat_cond, _select

    cond = {"emb": torch.arange(3.0)[:, None], "pair": (torch.arange(3), ["a", "b", "c"])}
    rep = _repeat_cond(cond, 1, 2, 3)
    assert rep["emb"].reshape(-1).tolist() == [1.0, 2.0] * 3
    assert rep["pair"][0].tolist() == [1, 2] * 3 and rep["pair"][1] == ["b", "c"] * 3
    sel = _select(cond, torch.tensor([True, False, True]))
    assert sel["emb"].reshape(-1).tolist() == [0.0, 2.0] and sel["pair"][1] == ["a", "c"]
