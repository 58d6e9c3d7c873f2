"""Gaussian mixtures, the ground truth of every estimator: checked against brute-force quadrature."""

import math

import pytest
import torch

from didr.diffusion.mixture import GaussianMixture, MixtureDenoiser, TiltedDensity
from didr.diffusion.schedules import FlowMatchingSchedule, VPCosineSchedule
from didr.errors import ConfigError
from didr.rewards.toy import LinearReward, SigmoidReward

MIX = GaussianMixture([-2.0, 1.0, 2.5], [0.5, 0.3, 0.8], [0.3, 0.2, 0.5])
GRID = torch.linspace(-12, 12, 48001, dtype=torch.float64)
DX = float(GRID[1] - GRID[0])


def _normal_logpdf(x, mean, var):
    var = torch.as_tensor(var, dtype=torch.float64)
    return -0.5 * (x - mean) ** 2 / var - 0.5 * torch.log(2 * math.pi * var)


def _brute_posterior(x_t, a, s):
    """p(x_0 | x_t) on GRID by Bayes: q_0(x_0) N(x_t; a x_0, s^2), normalised numerically."""
    logp = MIX.log_prob(GRID[:, None]) + _normal_logpdf(x_t, a * GRID, s**2)
    p = torch.softmax(logp, 0)
    mean = (p * GRID).sum()
    return p / DX, mean, (p * (GRID - mean) ** 2).sum()


@pytest.mark.parametrize("t", [0.05, 0.4, 0.8])
@pytest.mark.parametrize("x_t", [-1.5, 0.2, 2.0])
def test_posterior_matches_bayes_on_a_grid(t, x_t):
    """GaussianMixture.posterior: weights, means and variances give the brute-force posterior."""
    schedule = VPCosineSchedule()
    a, s = schedule.alpha(torch.tensor([t])).double(), schedule.sigma(torch.tensor([t])).double()
    post = MIX.posterior(torch.tensor([[x_t]], dtype=torch.float64), a, s)
    density, mean, var = _brute_posterior(x_t, float(a), float(s))
    w, m, v = post.weights[0], post.means[0, :, 0], post.variances[0]
    closed = (w * torch.exp(_normal_logpdf(GRID[:, None], m, v))).sum(1)
    torch.testing.assert_close(closed, density, atol=1e-6 * float(density.max()), rtol=0)
    torch.testing.assert_close(post.mean()[0, 0], mean, atol=1e-8, rtol=0)
    closed_var = (w * (v + m**2)).sum() - post.mean()[0, 0] ** 2
    torch.testing.assert_close(closed_var, var, atol=1e-8, rtol=0)


def test_noised_log_prob_is_the_convolution():
    """q_t(x) = integral q_0(x_0) N(x; a x_0, s^2) dx_0, and it integrates to one."""
    a, s = torch.tensor([0.6], dtype=torch.float64), torch.tensor([0.8], dtype=torch.float64)
    xs = torch.tensor([-3.0, 0.0, 1.7], dtype=torch.float64)
    closed = torch.stack([MIX.noised_log_prob(x.reshape(1, 1), a, s)[0] for x in xs])
    q0 = MIX.log_prob(GRID[:, None])
    brute = torch.stack([torch.logsumexp(q0 + _normal_logpdf(x, 0.6 * GRID, 0.64), 0) + math.log(DX) for x in xs])
    torch.testing.assert_close(closed, brute, atol=1e-8, rtol=0)
    on_grid = MIX.noised_log_prob(GRID[:, None], a.expand(len(GRID)), s.expand(len(GRID)))
    assert float(on_grid.exp().sum() * DX) == pytest.approx(1.0, abs=1e-8)


def test_posterior_samples_and_data_samples_have_the_right_moments():
    g = torch.Generator().manual_seed(0)
    x = MIX.sample(200000, generator=g)
    mean = float((MIX.weights * MIX.means[:, 0]).sum())
    var = float((MIX.weights * (MIX.stds**2 + MIX.means[:, 0] ** 2)).sum()) - mean**2
    assert float(x.mean()) == pytest.approx(mean, abs=4 * (var / 2e5) ** 0.5)
    assert float(x.var()) == pytest.approx(var, rel=0.02)
    post = MIX.posterior(torch.tensor([[0.1], [2.0]], dtype=torch.float64), torch.full((2,), 0.7, dtype=torch.float64),
                         torch.full((2,), 0.7, dtype=torch.float64))
    samples = post.sample(100000, generator=g)  # (n, B, D)
    assert samples.shape == (100000, 2, 1)
    torch.testing.assert_close(samples.mean(0), post.mean(), atol=0.02, rtol=0)


def test_posterior_mean_in_2d_matches_a_grid():
    ring = GaussianMixture.ring(n_modes=4, radius=2.0, std=0.5)
    ax = torch.linspace(-5, 5, 401, dtype=torch.float64)
    pts = torch.stack(torch.meshgrid(ax, ax, indexing="ij"), -1).reshape(-1, 2)
    x_t, a, s = torch.tensor([[0.4, -1.0]], dtype=torch.float64), 0.7, 0.6
    logp = ring.log_prob(pts) - 0.5 * ((x_t - a * pts) ** 2).sum(1) / s**2
    brute = (torch.softmax(logp, 0)[:, None] * pts).sum(0)
    closed = ring.posterior_mean(x_t, torch.tensor([a], dtype=torch.float64), torch.tensor([s], dtype=torch.float64))
    torch.testing.assert_close(closed[0], brute, atol=1e-6, rtol=0)


def test_mixture_denoiser_per_sample_times_including_clean():
    """Each sample gets its own time; one sample at t = 0 (s = 0, the data) must not change the
    others' answers."""
    den = MixtureDenoiser(MIX, FlowMatchingSchedule())
    x = torch.tensor([[0.5], [0.5], [-1.0]])
    t = torch.tensor([0.0, 0.5, 0.9])
    out = den(x, t)
    torch.testing.assert_close(out[0], x[0])
    for i in (1, 2):
        torch.testing.assert_close(out[i : i + 1], den(x[i : i + 1], t[i]))
    assert not torch.allclose(out[1], x[1])


def test_tilted_density_linear_reward_on_a_gaussian():
    """(M6) with r = c x on N(mu, sigma^2): p* = N(mu + c sigma^2 / beta, sigma^2)."""
    mu, sigma, c, beta = 0.5, 0.7, 1.5, 0.8
    tilted = TiltedDensity(GaussianMixture([mu], [sigma], [1.0]), LinearReward(c), beta)
    x = tilted.points[:, 0]
    mass = float(tilted.density.sum() * tilted.cell)
    mean = float((tilted.density * x).sum() * tilted.cell)
    var = float((tilted.density * (x - mean) ** 2).sum() * tilted.cell)
    assert mass == pytest.approx(1.0, abs=1e-9)
    assert mean == pytest.approx(mu + c * sigma**2 / beta, abs=1e-6)
    assert var == pytest.approx(sigma**2, abs=1e-6)
    assert tilted.mean_reward() == pytest.approx(c * mean, abs=1e-6)
    s = tilted.sample(100000, generator=torch.Generator().manual_seed(0))[:, 0]
    assert float(s.mean()) == pytest.approx(mean, abs=0.01)


def test_tilted_density_mixture_weights():
    """A linear tilt reweights component k by exp(c mu_k / beta + c^2 sigma_k^2 / (2 beta^2)) and
    shifts it by c sigma_k^2 / beta, so P*(x > 0) is closed form."""
    c, beta = 1.0, 2.0
    tilted = TiltedDensity(MIX, LinearReward(c), beta)
    mu, sd = MIX.means[:, 0], MIX.stds
    logw = MIX.weights.log() + c * mu / beta + c**2 * sd**2 / (2 * beta**2)
    w = torch.softmax(logw, 0)
    new_mu = mu + c * sd**2 / beta
    p_pos = float((w * 0.5 * torch.erfc(-new_mu / (sd * math.sqrt(2)))).sum())
    assert tilted.probability(tilted.points[:, 0] > 0) == pytest.approx(p_pos, abs=1e-4)
    # a smooth reward that favours x > 0 moves mass there
    sig = TiltedDensity(MIX, SigmoidReward(4.0), 0.5)
    base = float((MIX.weights * 0.5 * torch.erfc(-mu / (sd * math.sqrt(2)))).sum())
    assert sig.probability(sig.points[:, 0] > 0) > base + 0.05


def test_mixture_validation():
    with pytest.raises(ConfigError, match="as many"):
        GaussianMixture([0.0, 1.0], [1.0], [1.0])
    with pytest.raises(ConfigError, match="stds"):
        GaussianMixture([0.0], [0.0], [1.0])
    with pytest.raises(ConfigError, match="weights"):
        GaussianMixture([0.0, 1.0], [1.0, 1.0], [0.7, 0.7])
    with pytest.raises(ConfigError, match="beta"):
        TiltedDensity(MIX, LinearReward(), 0.0)


def test_mixture_from_yaml_and_json_files(tmp_path):
    yaml_file = tmp_path / "ring.yaml"
    yaml_file.write_text("means: [[1, 0, 0], [0, 1, 0]]\nstds: [0.05, 0.1]\nweights: [0.25, 0.75]\n")
    mix = GaussianMixture.from_file(yaml_file)
    assert mix.dim == 3 and mix.means.shape == (2, 3) and mix.stds.tolist() == [0.05, 0.1]
    json_file = tmp_path / "line.json"
    json_file.write_text('{"means": [-1, 1], "stds": [0.5, 0.5], "weights": [0.5, 0.5]}')
    assert GaussianMixture.from_file(json_file).dim == 1


@pytest.mark.parametrize(
    "text, fragment",
    [
        ("means: [[1, 0], [0, 1, 0]]\nstds: [1, 1]\nweights: [0.5, 0.5]", "rows of lengths [2, 3]"),
        ("means: [[1, 0], [0, 1]]\nstds: [1, 1, 1]\nweights: [0.5, 0.5]", "as many stds and weights as means (2)"),
        ("means: [[1, 0], [0, 1]]\nstds: [1, 1]\nweights: [0.6, 0.6]", "sum to 1"),
        ("means: [[1, 0], [0, 1]]\nstds: [[1], [1]]\nweights: [0.5, 0.5]", "stds must be one number per component"),
        ("means: [[1, 0], [0, 1]]\nstds: [1, -1]\nweights: [0.5, 0.5]", "stds must be > 0"),
        ("means: [[1, 0], [0, 'a']]\nstds: [1, 1]\nweights: [0.5, 0.5]", "means must be numbers"),
        ("means: [[1, 0], [0, 1]]\nstds: [1, 1]", "missing weights"),
        ("means: [[1, 0]]\nstds: [1]\nweights: [1]\ncolour: red", "unknown field(s) colour"),
        ("[1, 2, 3]", "expected a mapping"),
        ("means: [1, 2\n", "not valid YAML or JSON"),
    ],
)
def test_malformed_mixture_files_are_refused_in_one_line(tmp_path, text, fragment):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as err:
        GaussianMixture.from_file(path)
    message = str(err.value)
    assert fragment in message and str(path) in message and "\n" not in message


def test_missing_mixture_file(tmp_path):
    with pytest.raises(ConfigError, match="mixture file not found"):
        GaussianMixture.from_file(tmp_path / "nope.yaml")


def test_linear_tilt_is_m14():
    """Component k moves by sigma_k^2 w / beta; its weight goes as pi_k exp(w.mu_k/beta + sigma_k^2 |w|^2 / (2 beta^2))."""
    mix = GaussianMixture([[0.0, 1.0], [2.0, -1.0]], [0.5, 0.2], [0.4, 0.6])
    w, beta = torch.tensor([1.0, -2.0], dtype=torch.float64), 0.8
    tilted = mix.linear_tilt(w, beta)
    torch.testing.assert_close(tilted.means, mix.means + (mix.stds**2)[:, None] * w / beta)
    logits = mix.weights.log() + mix.means @ w / beta + mix.stds**2 * 5.0 / (2 * beta**2)
    torch.testing.assert_close(tilted.weights, torch.softmax(logits, 0))
