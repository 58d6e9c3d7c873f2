"""Generator objectives: the surrogate loss's gradient is (M11), DIDR's target is p* (M6-M10).

Reference and TA are exact mixture denoisers, so every gradient here is known in closed form.
"""

import pytest
import torch

from didr.diffusion.mixture import GaussianMixture, MixtureDenoiser
from didr.diffusion.schedules import FlowMatchingSchedule, VPCosineSchedule
from didr.errors import ConfigError
from didr.objectives.drs import DRPEstimator, DRSEstimate, DRSEstimator, ExactMixtureDRS
from didr.objectives.methods import DI, DIDR, DMD, OMEGAS, DIPlusPlus, DMDReward, ReFL, equal_push_alpha
from didr.rewards.toy import LinearReward, SigmoidReward

VP = VPCosineSchedule()
REF_MIX = GaussianMixture.ring(n_modes=4, radius=2.0, std=0.5)
TA_MIX = GaussianMixture.ring(n_modes=3, radius=1.5, std=0.7)
REF, TA = MixtureDenoiser(REF_MIX, VP), MixtureDenoiser(TA_MIX, VP)
T0 = 0.4


def _grad(objective, x0, seed, ref=REF, ta=TA):
    x0 = x0.clone().requires_grad_(True)
    torch.manual_seed(seed)
    loss, logs = objective(x0, None, ref, ta)
    (g,) = torch.autograd.grad(loss, x0)
    return loss.detach(), g, logs


def _replay(x0, seed, t0=T0):
    """The t and eps the objective drew: sample_times' torch.rand, then randn_like."""
    torch.manual_seed(seed)
    torch.rand(x0.shape[0])  # t_min = t_max = t0, so the draw only advances the state
    eps = torch.randn_like(x0)
    t = torch.full((x0.shape[0],), t0)
    return t, VP.add_noise(x0, t, eps)


@pytest.mark.parametrize("omega", sorted(OMEGAS))
def test_surrogate_gradient_is_m11(omega):
    """d loss / d x0 = omega (a / s^2)(D_ta - D_ref) a per sample, over the batch (M11)."""
    x0 = torch.randn(6, 2, generator=torch.Generator().manual_seed(0))
    _, grad, logs = _grad(DI(VP, omega=omega, t_min=T0, t_max=T0), x0, seed=1)
    t, x_t = _replay(x0, seed=1)
    a, s = VP.alpha(t)[:, None], VP.sigma(t)[:, None]
    expected = OMEGAS[omega](a, s) * a / s**2 * (TA(x_t, t) - REF(x_t, t)) * a / x0.shape[0]
    torch.testing.assert_close(grad, expected, rtol=1e-5, atol=1e-7)
    assert logs["grad_norm"] > 0
    if omega == "x0":  # the x0 convention: the gradient is D_ta - D_target itself
        torch.testing.assert_close(grad * x0.shape[0], TA(x_t, t) - REF(x_t, t), rtol=1e-5, atol=1e-6)


def test_dmd_normalises_per_sample():
    """DMD2's normalisation divides each sample's gradient by mean |x0 - D_ref|."""
    x0 = torch.randn(5, 2, generator=torch.Generator().manual_seed(2))
    _, grad, _ = _grad(DMD(VP, t_min=T0, t_max=T0), x0, seed=3)
    _, plain, _ = _grad(DI(VP, t_min=T0, t_max=T0), x0, seed=3)
    t, x_t = _replay(x0, seed=3)
    scale = (x0 - REF(x_t, t)).abs().mean(1, keepdim=True)
    torch.testing.assert_close(grad, plain / scale, rtol=1e-5, atol=1e-7)


def test_didr_with_infinite_beta_is_di():
    """beta -> infinity: no reward, DIDR's gradient is DI's (same random state)."""
    x0 = torch.randn(64, 2, generator=torch.Generator().manual_seed(4))
    reward = SigmoidReward(4.0)
    _, g_di, _ = _grad(DI(VP), x0, seed=5)
    for est in (DRPEstimator(reward, 1e9, steps=2), ExactMixtureDRS(REF_MIX, reward, 1e9)):
        _, g_didr, logs = _grad(DIDR(VP, est), x0, seed=5)
        torch.testing.assert_close(g_didr, g_di, rtol=1e-5, atol=1e-8)
        assert logs["drs_norm"] < 1e-6


def test_didr_subtracts_omega_a_drs():
    """Target score s_ref + DRS (M8): DIDR's gradient is DI's minus omega a DRS / B per sample."""
    x0 = torch.randn(16, 2, generator=torch.Generator().manual_seed(6))
    est = ExactMixtureDRS(REF_MIX, SigmoidReward(4.0), 0.5)
    _, g_di, _ = _grad(DI(VP, omega="score", t_min=T0, t_max=T0), x0, seed=7)
    _, g_didr, _ = _grad(DIDR(VP, est, omega="score", t_min=T0, t_max=T0), x0, seed=7)
    t, x_t = _replay(x0, seed=7)
    drs = est(REF, x_t, t).drs
    assert drs.abs().max() > 0.01
    torch.testing.assert_close(g_didr, g_di - VP.alpha(t)[:, None] * drs / x0.shape[0], rtol=1e-4, atol=1e-6)


# --- the optimum: a linear reward keeps p* a Gaussian mixture (docs/method.md §2) ---
C, BETA = 1.0, 0.8
REF_1D = GaussianMixture([-2.0, 0.5, 2.5], [0.5, 0.3, 0.8], [0.3, 0.2, 0.5])


def _tilted(mix, c, beta):
    """p* for r = c x: component k -> N(mu_k + c sigma_k^2 / beta, sigma_k^2),
    weight ∝ w_k exp(c mu_k / beta + c^2 sigma_k^2 / (2 beta^2))."""
    mu, sd = mix.means[:, 0], mix.stds
    w = torch.softmax(mix.weights.log() + c * mu / beta + c**2 * sd**2 / (2 * beta**2), 0)
    return GaussianMixture(mu + c * sd**2 / beta, sd, w)


STAR = _tilted(REF_1D, C, BETA)


def _theta_grad(objective, shift, scale, n=20000, seed=0):
    """Generator x0 = shift + scale y with y ~ p* (exact, reparameterised); the TA is the exact
    denoiser of that generator's distribution. Returns d loss / d (shift, scale)."""
    y = STAR.sample(n, generator=torch.Generator().manual_seed(seed)).float()
    theta = torch.tensor([shift, scale], requires_grad=True)
    x0 = theta[0] + theta[1] * y
    gen_mix = GaussianMixture(shift + scale * STAR.means[:, 0], scale * STAR.stds, STAR.weights)
    torch.manual_seed(seed + 1)
    loss, _ = objective(x0, None, MixtureDenoiser(REF_1D, VP), MixtureDenoiser(gen_mix, VP))
    (g,) = torch.autograd.grad(loss, theta)
    return g


def test_didr_gradient_vanishes_at_p_star():
    """(M10): KL(p_theta,t || p*_t) is minimised at p_theta = p*, where the DIDR gradient is zero;
    off the optimum, and for DI at p*, it is clearly not."""
    didr = DIDR(VP, ExactMixtureDRS(REF_1D, LinearReward(C), BETA))
    at_opt = _theta_grad(didr, 0.0, 1.0)
    shifted = _theta_grad(didr, 0.3, 1.0)
    scaled = _theta_grad(didr, 0.0, 1.2)
    di_at_opt = _theta_grad(DI(VP), 0.0, 1.0)
    assert at_opt.abs().max() < 1e-3
    assert shifted[0] > 0.05  # descent moves the shift back towards 0
    assert scaled[1] > 0.05  # and the scale back towards 1
    assert di_at_opt[0] > 0.05  # DI pulls towards p_ref, which lies left of p*


def test_dipp_adds_minus_alpha_mean_reward():
    reward = SigmoidReward(4.0)
    x0 = torch.randn(32, 2, generator=torch.Generator().manual_seed(8))
    loss_di, g_di, _ = _grad(DI(VP), x0, seed=9)
    loss_pp, g_pp, logs = _grad(DIPlusPlus(VP, reward, alpha=0.3), x0, seed=9)
    r = reward(x0, None)
    torch.testing.assert_close(loss_pp, loss_di - 0.3 * r.mean())
    xr = x0.clone().requires_grad_(True)
    (g_r,) = torch.autograd.grad(reward(xr, None).mean(), xr)
    torch.testing.assert_close(g_pp, g_di - 0.3 * g_r, rtol=1e-5, atol=1e-8)
    assert logs["reward"] == pytest.approx(float(r.mean()))
    with pytest.raises(ConfigError):
        DIPlusPlus(VP, reward, alpha=-1.0)


def test_dmd_with_an_endpoint_reward_is_dmd_minus_alpha_mean_reward():
    reward = SigmoidReward(4.0)
    x0 = torch.randn(32, 2, generator=torch.Generator().manual_seed(8))
    loss_dmd, g_dmd, _ = _grad(DMD(VP), x0, seed=9)
    loss_r, g_r, logs = _grad(DMDReward(VP, reward, alpha=0.5), x0, seed=9)
    torch.testing.assert_close(loss_r, loss_dmd - 0.5 * reward(x0, None).mean())
    xr = x0.clone().requires_grad_(True)
    (g_reward,) = torch.autograd.grad(reward(xr, None).mean(), xr)
    torch.testing.assert_close(g_r, g_dmd - 0.5 * g_reward, rtol=1e-5, atol=1e-8)
    assert DMDReward(VP, reward, alpha=0.5).normalise and "reward" in logs


def test_configured_dmd_with_reward_normalises_and_dipp_does_not():
    """Built from a MethodConfig (whose normalise defaults to False), dmdr still normalises as DMD2
    does; an unset alpha is the derived default for both endpoint-reward methods."""
    from didr.objectives.config import MethodConfig, build_objective

    reward = SigmoidReward(4.0)
    dmdr = build_objective(MethodConfig(name="dmdr", t_max=0.4), VP, reward)
    dipp = build_objective(MethodConfig(name="dipp", t_max=0.4), VP, reward)
    assert isinstance(dmdr, DMDReward) and dmdr.normalise and not dipp.normalise
    assert dmdr.alpha == dipp.alpha == pytest.approx(equal_push_alpha(VP, 0.72, "x0", t_max=0.4))
    assert build_objective(MethodConfig(name="dipp", alpha=2.0), VP, reward).alpha == 2.0


@pytest.mark.parametrize("omega", ["x0", "score"])
def test_equal_push_alpha_matches_didrs_push_where_the_data_are_smooth(omega):
    """(M13): on a very broad Gaussian, Cov[x_0 | x_t] ~ (s/a)^2 I, so DIDR's reward push on x_0,
    averaged over its noise levels, is alpha grad r with alpha = E_t[omega] / beta. With TA =
    reference the distribution-matching part vanishes and the exact-DRS gradient is that push alone."""
    broad = MixtureDenoiser(GaussianMixture([[0.0, 0.0]], [30.0], [1.0]), VP)
    w, beta, t_max = torch.tensor([1.0, -0.5]), 0.72, 0.4
    didr = DIDR(VP, ExactMixtureDRS(broad.mixture, LinearReward(direction=w.tolist()), beta), omega=omega, t_max=t_max)
    x0 = torch.randn(100_000, 2, generator=torch.Generator().manual_seed(12))
    _, grad, _ = _grad(didr, x0, seed=13, ref=broad, ta=broad)
    push = -grad.sum(0)  # d loss / d x0 summed over the batch: the mean push per sample
    alpha = equal_push_alpha(VP, beta, omega, t_max=t_max)
    torch.testing.assert_close(push.double(), alpha * w.double(), rtol=0.02, atol=0)
    if omega == "x0":  # on the toy's t <= 0.4: about 0.2 for beta = 0.72, far from 1 / beta
        assert 0.15 < alpha < 0.3
    else:
        assert alpha == pytest.approx(1 / beta)


def test_refl_loss_is_minus_mean_reward():
    reward = SigmoidReward(4.0)
    z = torch.randn(8, 2)
    x0 = z.clone()
    loss, logs = ReFL(reward)(x0, None, REF, None)
    torch.testing.assert_close(loss, -reward(x0, None).mean())
    assert not ReFL.uses_ta
    # regression onto the initial generator at the same z: here it outputs z + 0.5
    refl = ReFL(reward, reg_weight=2.0, initial_generator=lambda zz, c: zz + 0.5)
    loss_reg, logs = refl(x0, None, REF, None, z=z)
    torch.testing.assert_close(loss_reg, -reward(x0, None).mean() + 2.0 * 0.25)
    assert logs["reg"] == pytest.approx(0.25)


class _RecordingTA(torch.nn.Module):
    """Denoiser that records the times it is queried at."""

    def __init__(self, schedule):
        super().__init__()
        self.schedule, self.times = schedule, []

    def forward(self, x_t, t, cond=None):
        self.times.append(t.clone())
        return torch.zeros_like(x_t)


def test_generator_times_respect_the_range_after_the_flow_shift():
    """method.t_max = 0.4 under shift 3 trains up to t = 0.4, not shift(0.4) = 0.67."""
    flow = FlowMatchingSchedule(shift=3.0)
    ta, ref = _RecordingTA(flow), _RecordingTA(flow)
    x0 = torch.randn(4096, 2)
    DI(flow, t_min=0.05, t_max=0.4)(x0, None, ref, ta)
    t = torch.cat(ta.times)
    assert float(t.max()) <= 0.4 + 1e-6 and float(t.min()) >= 0.05 - 1e-6
    assert float(t.max()) > 0.39


@pytest.mark.parametrize(
    "kw, fragment",
    [({"t_min": 0.5, "t_max": 0.3}, "t_min = 0.5 > t_max = 0.3"), ({"t_max": 1.0}, "outside"), ({"t_min": 1e-4}, "outside")],
    ids=["reversed", "above the schedule", "below the schedule"],
)
def test_time_range_outside_the_schedule_is_refused(kw, fragment):
    with pytest.raises(ConfigError, match=fragment):
        DI(VP, **kw)


class _Poisoned(torch.nn.Module):
    """A denoiser whose output is NaN in one row."""

    def __init__(self, base, row=3):
        super().__init__()
        self.base, self.row, self.schedule = base, row, base.schedule

    def forward(self, x_t, t, cond=None):
        out = self.base(x_t, t, cond).clone()
        out[self.row] = float("nan")
        return out


class _NaNDRS(DRSEstimator):
    needs_reward_grad = False

    def __call__(self, ref, x_t, t, cond=None):
        return DRSEstimate(torch.full_like(x_t, float("nan")))


@pytest.mark.parametrize(
    "source, build",
    [
        ("TA", lambda: (DI(VP), REF, _Poisoned(TA))),
        ("reference", lambda: (DI(VP), _Poisoned(REF), TA)),
        ("reference", lambda: (DIDR(VP, DRPEstimator(SigmoidReward(4.0), 0.5)), _Poisoned(REF), TA)),
        ("DRS estimator", lambda: (DIDR(VP, _NaNDRS(SigmoidReward(4.0), 0.5)), REF, TA)),
        ("DRS estimator", lambda: (DIPlusPlus(VP, SigmoidReward(4.0), 1.0), REF, TA)),
    ],
    ids=["TA", "reference", "reference under DRP", "DRS estimator", "no DRS: passes"],
)
def test_nonfinite_values_raise_naming_their_source(source, build):
    """A NaN from the TA, the reference or a DRS estimator is not turned into a zero push: the
    objective raises, naming where it came from, and the training loop skips the step."""
    from didr.errors import NonFiniteError

    objective, ref, ta = build()
    x0 = torch.randn(8, 2, generator=torch.Generator().manual_seed(11))
    if isinstance(objective, DIPlusPlus):  # a finite call stays finite
        loss, _ = objective(x0, None, ref, ta)
        assert torch.isfinite(loss)
        return
    with pytest.raises(NonFiniteError, match=source) as err:
        objective(x0, None, ref, ta)
    assert "\n" not in str(err.value)


def test_refl_regulariser_needs_the_initial_generator_and_z():
    """A regulariser that cannot be computed is refused, not silently dropped."""
    from didr.objectives.config import MethodConfig, build_objective

    reward = SigmoidReward(4.0)
    with pytest.raises(ConfigError, match="initial generator"):
        ReFL(reward, reg_weight=2.0)
    with pytest.raises(ConfigError, match="method.refl_reg"):
        build_objective(MethodConfig(name="refl", refl_reg=10.0), VP, reward)
    assert MethodConfig(name="refl", refl_reg=10.0).needs_initial_generator
    assert not MethodConfig(name="refl").needs_initial_generator and not MethodConfig(refl_reg=10.0).needs_initial_generator
    refl = build_objective(MethodConfig(name="refl", refl_reg=10.0), VP, reward, initial_generator=lambda z, c: z)
    with pytest.raises(ValueError, match="needs the generator's input z"):
        refl(torch.zeros(4, 2), None, REF, None)
    ReFL(reward)(torch.zeros(4, 2), None, REF, None)  # no regulariser: z is not needed


class _StepLike(torch.nn.Module):
    name, differentiable = "hard", False

    def forward(self, x, prompts=None):
        return (x[:, 0] > 0).float()


def test_reward_terms_refuse_a_reward_without_gradient():
    """DI++'s endpoint term and ReFL differentiate the reward; without a gradient they would train
    DI, or nothing, without a word."""
    from didr.errors import RewardError

    with pytest.raises(RewardError, match="'hard' has no gradient"):
        DIPlusPlus(VP, _StepLike(), alpha=1.0)
    with pytest.raises(RewardError, match="'hard' has no gradient"):
        ReFL(_StepLike())
    DIPlusPlus(VP, _StepLike(), alpha=0.0)  # no reward term at all


def test_unknown_omega():
    with pytest.raises(ConfigError, match="omega"):
        DI(VP, omega="uniform")
