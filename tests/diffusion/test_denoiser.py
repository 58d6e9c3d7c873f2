"""The Denoiser interface (M2): adapters, the score (M3) and classifier-free guidance (M4)."""

import pytest
import torch
from torch import nn

from didr.diffusion.denoiser import (
    EpsDenoiser,
    FlowDenoiser,
    GuidedDenoiser,
    VDenoiser,
    X0Denoiser,
    concat_cond,
    score_from_x0,
    x0_from_score,
)
from didr.diffusion.mixture import GaussianMixture, MixtureDenoiser
from didr.diffusion.schedules import FlowMatchingSchedule, VPCosineSchedule, VPDiscreteSchedule


class Oracle(nn.Module):
    """A 'network' that returns a prescribed prediction and records the time it was fed."""

    def __init__(self, out):
        super().__init__()
        self.out, self.seen = out, None

    def forward(self, x, model_time, cond):
        self.seen = model_time
        return self.out


def _data(shape=(5, 3, 4, 4), seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=g, dtype=torch.float64), torch.randn(shape, generator=g, dtype=torch.float64)


# float32 times: the adapters hand the network float32 times whatever the data dtype
T = torch.tensor([0.02, 0.2, 0.5, 0.8, 0.97])


@pytest.mark.parametrize("schedule", [VPCosineSchedule(), VPDiscreteSchedule()], ids=["cosine", "discrete"])
@pytest.mark.parametrize("kind", ["eps", "v", "x0"])
def test_vp_adapters_recover_x0(schedule, kind):
    """Build each parameterisation's target from a known (x0, eps); the adapter must return x0 (M2)."""
    x0, eps = _data()
    x_t = schedule.add_noise(x0, T, eps)
    a, s = schedule.alpha(T).reshape(-1, 1, 1, 1), schedule.sigma(T).reshape(-1, 1, 1, 1)
    pred, cls = {"eps": (eps, EpsDenoiser), "v": (a * eps - s * x0, VDenoiser), "x0": (x0, X0Denoiser)}[kind]
    net = Oracle(pred)
    torch.testing.assert_close(cls(net, schedule)(x_t, T), x0, rtol=1e-7, atol=1e-7)
    torch.testing.assert_close(net.seen, schedule.model_time(T))


@pytest.mark.parametrize("sign", [1.0, -1.0])
def test_flow_adapter_recovers_x0(sign):
    """u = eps - x0 (SD3 / Flux), or x0 - eps with sign = -1 (Z-Image); time fed as 1000 t."""
    schedule = FlowMatchingSchedule(shift=3.0, time_scale=1000.0)
    x0, eps = _data()
    x_t = schedule.add_noise(x0, T, eps)
    net = Oracle(sign * (eps - x0))
    torch.testing.assert_close(FlowDenoiser(net, schedule, sign=sign)(x_t, T), x0, rtol=1e-7, atol=1e-7)
    torch.testing.assert_close(net.seen, 1000 * T)


class _Affine(nn.Module):
    """A deterministic 'network' whose output depends on its input and its time."""

    def forward(self, x, model_time, cond):
        return 0.7 * x + 0.01 * model_time.reshape(-1, *([1] * (x.ndim - 1))) - 0.2


@pytest.mark.parametrize("kind", ["eps", "v", "x0", "flow", "flow, sign -1"])
def test_dsm_is_the_parameterisations_own_loss(kind):
    """With the adapter's dsm_weight, DSM (M5) in x0 units is the loss the backbone was trained
    with: eps-MSE for eps-prediction, v-MSE, x0-MSE, flow-velocity MSE (either sign)."""
    from didr.diffusion.losses import dsm_loss

    flow = kind.startswith("flow")
    schedule = FlowMatchingSchedule(shift=3.0, time_scale=1000.0) if flow else VPDiscreteSchedule()
    x0, eps = (v.float() for v in _data())
    a, s = schedule.alpha(T).reshape(-1, 1, 1, 1), schedule.sigma(T).reshape(-1, 1, 1, 1)
    sign = -1.0 if kind.endswith("-1") else 1.0
    den, target = {
        "eps": (EpsDenoiser(_Affine(), schedule), eps),
        "v": (VDenoiser(_Affine(), schedule), a * eps - s * x0),
        "x0": (X0Denoiser(_Affine(), schedule), x0),
    }.get(kind) or (FlowDenoiser(_Affine(), schedule, sign=sign), sign * (eps - x0))
    raw = den.net(schedule.add_noise(x0, T, eps), schedule.model_time(T), None)
    native = ((raw - target) ** 2).reshape(5, -1).mean(1)
    torch.testing.assert_close(dsm_loss(den, x0, T, noise=eps), native, rtol=1e-4, atol=1e-6)


def test_scalar_time_is_expanded_per_sample():
    schedule = VPDiscreteSchedule()
    x0, eps = _data((4, 2))
    net = Oracle(eps)
    x_t = schedule.add_noise(x0, torch.tensor(0.3), eps)
    torch.testing.assert_close(EpsDenoiser(net, schedule)(x_t, 0.3), x0, rtol=1e-6, atol=1e-6)
    assert net.seen.shape == (4,)
    torch.testing.assert_close(net.seen, torch.full((4,), 299.0), atol=1e-3, rtol=0)


@pytest.mark.parametrize("schedule", [VPCosineSchedule(), FlowMatchingSchedule()], ids=["vp", "flow"])
def test_mixture_score_is_grad_log_density(schedule):
    """(M3): (a D - x) / s^2 with the exact posterior mean equals autograd of log q_t."""
    mix = GaussianMixture.ring(n_modes=5, radius=2.0, std=0.4)
    den = MixtureDenoiser(mix, schedule)
    g = torch.Generator().manual_seed(3)
    t = torch.tensor([0.05, 0.3, 0.6, 0.9])
    x = (3 * torch.randn(4, 2, generator=g, dtype=torch.float64)).requires_grad_(True)
    logp = mix.noised_log_prob(x, schedule.alpha(t).double(), schedule.sigma(t).double())
    (autograd,) = torch.autograd.grad(logp.sum(), x)
    x = x.detach()
    torch.testing.assert_close(score_from_x0(den(x, t), x, t, schedule), autograd, rtol=1e-8, atol=1e-8)
    torch.testing.assert_close(den.score(x, t), autograd, rtol=1e-8, atol=1e-8)
    torch.testing.assert_close(x0_from_score(autograd, x, t, schedule), den(x, t), rtol=1e-6, atol=1e-6)


class CondNet(nn.Module):
    """x0-predictor whose output depends nonlinearly on x and on a label embedding (label 0 = null)."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.emb = nn.Embedding(4, 3)
        self.lin = nn.Linear(4, 3)

    def forward(self, x, model_time, cond):
        h = torch.cat([x, model_time[:, None]], 1)
        return torch.tanh(self.lin(h)) * (1 + self.emb(cond))


def test_guidance_limits_and_linearity():
    """(M4): scale 1 is the conditional, 0 the unconditional, and D~ is affine in the scale."""
    schedule = VPCosineSchedule()
    base = X0Denoiser(CondNet(), schedule)
    null = lambda c: torch.zeros_like(c)  # noqa: E731
    x, t, c = torch.randn(6, 3), torch.rand(6), torch.tensor([1, 2, 3, 1, 2, 3])
    with torch.no_grad():
        d_cond, d_uncond = base(x, t, c), base(x, t, null(c))
        guided = {w: GuidedDenoiser(base, w, null)(x, t, c) for w in (0.0, 1.0, 2.0, 7.5)}
    torch.testing.assert_close(guided[1.0], d_cond)
    torch.testing.assert_close(guided[0.0], d_uncond, rtol=1e-6, atol=1e-6)
    for w in (2.0, 7.5):
        torch.testing.assert_close(guided[w], d_uncond + w * (d_cond - d_uncond), rtol=1e-5, atol=1e-5)
    assert not torch.allclose(guided[7.5], d_cond)
    # guiding D is guiding the score: s~ = s(null) + w (s(c) - s(null))
    s = lambda d: score_from_x0(d, x, t, schedule)  # noqa: E731
    torch.testing.assert_close(s(guided[7.5]), s(d_uncond) + 7.5 * (s(d_cond) - s(d_uncond)), rtol=1e-4, atol=1e-4)


def test_concat_cond_structures():
    a, b = torch.zeros(2, 3), torch.ones(1, 3)
    assert concat_cond(a, b).shape == (3, 3)
    out = concat_cond({"ids": a, "mask": a[:, 0]}, {"ids": b, "mask": b[:, 0]})
    assert out["ids"].shape == (3, 3) and out["mask"].shape == (3,)
    assert concat_cond(["x", "y"], ["z"]) == ["x", "y", "z"]
    assert concat_cond((a,), (b,))[0].shape == (3, 3)
    with pytest.raises(TypeError):
        concat_cond("x", "y")
