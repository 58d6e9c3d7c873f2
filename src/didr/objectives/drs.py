"""Estimators of the Diffused Reward Score, DRS(x_t, t) = grad_{x_t} log h_t(x_t) (M8).

All estimators share one call: ``estimator(ref, x_t, t, cond) -> DRSEstimate``, with ``ref`` the
reference Denoiser, x_t (B, ...) and per-sample t (B,). They return the DRS and, when they
computed it on the way, the reference's denoised estimate D_ref(x_t, t), which the objective can
reuse instead of calling the reference again.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
import torch
from torch import Tensor
from torch.utils.checkpoint import checkpoint as grad_checkpoint

from didr.diffusion.mixture import GaussianMixture
from didr.diffusion.samplers import ancestral_sample, ddim_step, time_grid
from didr.diffusion.schedules import broadcast_to
from didr.errors import ConfigError, NonFiniteError, RewardError
from didr.rewards.base import call_reward, is_differentiable, reward_name


def require_finite(x: Tensor, what: str, t: Tensor) -> Tensor:
    """``x`` unchanged if finite, else a NonFiniteError naming ``what`` and the noise levels hit."""
    bad = ~torch.isfinite(x.reshape(x.shape[0], -1)).all(dim=1)
    if bad.any():
        tb = t.expand(x.shape[0])[bad]
        raise NonFiniteError(f"{what} is NaN or inf for {int(bad.sum())} of {x.shape[0]} samples "
                             f"(t in [{float(tb.min()):.3g}, {float(tb.max()):.3g}])")
    return x


@dataclass
class DRSEstimate:
    drs: Tensor
    x0_ref: Tensor | None = None
    ess: Tensor | None = None  # Monte Carlo: the effective sample size of each x_t's weights, 1 / sum w^2


class DRSEstimator:
    """Base class; ``needs_reward_grad`` estimators refuse rewards without a gradient."""

    needs_reward_grad = True

    def __init__(self, reward: Callable, beta: float):
        if not beta > 0:
            raise ConfigError(f"beta must be > 0, got {beta}")
        if self.needs_reward_grad and not is_differentiable(reward):
            raise RewardError(
                f"reward {reward_name(reward)!r} has no gradient; the {type(self).__name__} estimator needs one "
                "(use the Monte-Carlo estimator, drs: mc)"
            )
        self.reward, self.beta = reward, float(beta)

    def __call__(self, ref, x_t: Tensor, t: Tensor, cond: Any = None) -> DRSEstimate:  # pragma: no cover
        raise NotImplementedError


class DRPEstimator(DRSEstimator):
    """The Diffused Reward Proxy (M12): DRS ~ grad_{x_t} r(Phi_k(x_t, t)) / beta.

    Phi_k is k deterministic DDIM steps (flow Euler for flow matching: the same update) with the
    reference from t to 0, differentiated with respect to x_t only, never the reference's weights.
    k = 1 is Tweedie's x^_0 = D_ref(x_t, t), the first-order form of (M9). ``checkpoint``
    recomputes each reference call in the backward pass, so memory does not grow with k.
    """

    def __init__(self, reward: Callable, beta: float, steps: int = 1, checkpoint: bool = False):
        super().__init__(reward, beta)
        if steps < 1:
            raise ConfigError(f"DRP steps k must be >= 1, got {steps}")
        self.steps, self.checkpoint = int(steps), checkpoint

    def __call__(self, ref, x_t, t, cond=None):
        with torch.enable_grad():
            x = x_t.detach().requires_grad_(True)
            ts = time_grid(t, self.steps)
            state, x0_first = x, None
            for t_cur, t_next in zip(ts[:-1], ts[1:]):
                if self.checkpoint:
                    state, x0 = grad_checkpoint(ddim_step, ref, state, t_cur, t_next, cond, use_reentrant=False)
                else:
                    state, x0 = ddim_step(ref, state, t_cur, t_next, cond)
                x0_first = x0 if x0_first is None else x0_first
            require_finite(state, f"the reference's {self.steps}-step denoise in the DRP estimator", t)  # name it before the reward sees it
            r = call_reward(self.reward, state, cond)
            (grad,) = torch.autograd.grad(r.sum(), x)
        return DRSEstimate(grad / self.beta, x0_first.detach())


class MonteCarloDRS(DRSEstimator):
    """Monte-Carlo DRS from (M9): draw x_0^i ~ p_ref(x_0 | x_t) with the ancestral sampler,
    weight by w_i = exp(r(x_0^i) / beta) (normalised in log space), and return
    a / s^2 (weighted mean - plain mean). Needs no reward gradient; unbiased as N grows
    (up to the sampler's discretisation error: with few steps the sampler under-disperses across
    modes, so estimates shrink towards zero; see benchmarks/results/drs_error.md)."""

    needs_reward_grad = False

    def __init__(self, reward, beta, samples: int = 64, sampler_steps: int = 10, chunk: int = 65536, seed: int | None = None):
        super().__init__(reward, beta)
        if samples < 2 or sampler_steps < 1:
            raise ConfigError(f"Monte-Carlo DRS needs samples >= 2 and sampler_steps >= 1, got {samples}, {sampler_steps}")
        self.samples, self.sampler_steps, self.chunk = samples, sampler_steps, chunk
        self.generator = torch.Generator().manual_seed(seed) if seed is not None else None

    @torch.no_grad()
    def __call__(self, ref, x_t, t, cond=None):
        b, n = x_t.shape[0], self.samples
        per_chunk = max(1, self.chunk // n)
        out, ess = [], []
        for lo in range(0, b, per_chunk):
            xs, ts = x_t[lo : lo + per_chunk], t[lo : lo + per_chunk]
            m = xs.shape[0]
            rep = xs.repeat(n, *([1] * (xs.ndim - 1)))  # (n*m, ...), sample-major
            t_rep = ts.repeat(n)
            c_rep = _repeat_cond(cond, lo, m, n)
            x0 = ancestral_sample(ref, rep, time_grid(t_rep, self.sampler_steps), c_rep, self.generator)
            require_finite(x0, "the reference's posterior samples in the Monte-Carlo DRS estimator", t_rep)
            logw = (call_reward(self.reward, x0, c_rep) / self.beta).reshape(n, m)
            w = torch.softmax(logw, dim=0)
            ess.append(1.0 / (w.double() ** 2).sum(0))
            x0 = x0.reshape(n, m, *xs.shape[1:])
            diff = (broadcast_to(w, x0) * x0).sum(0) - x0.mean(0)
            a, s = broadcast_to(ref.schedule.alpha(ts), xs), broadcast_to(ref.schedule.sigma(ts), xs)
            out.append(a / s**2 * diff)
        return DRSEstimate(torch.cat(out), ess=torch.cat(ess))


def _repeat_cond(cond, lo, m, n):
    """Rows lo..lo+m of a conditioning batch, repeated n times sample-major (like the x_t rows)."""
    if cond is None:
        return None
    if isinstance(cond, Tensor):
        return cond[lo : lo + m].repeat(n, *([1] * (cond.ndim - 1)))
    if isinstance(cond, dict):
        return {k: _repeat_cond(v, lo, m, n) for k, v in cond.items()}
    if isinstance(cond, tuple):
        return tuple(_repeat_cond(v, lo, m, n) for v in cond)
    if isinstance(cond, list):
        return list(cond[lo : lo + m]) * n
    raise TypeError(f"cannot repeat conditioning of type {type(cond).__name__}")


class HybridDRS(DRSEstimator):
    """DRP below ``t_switch`` and Monte-Carlo above it: DRP's first-order bias grows with the
    noise level, where the posterior p_ref(x_0 | x_t) is wide (see benchmarks/drs_error)."""

    needs_reward_grad = True

    def __init__(self, low: DRSEstimator, high: DRSEstimator, t_switch: float):
        self.low, self.high, self.t_switch = low, high, float(t_switch)
        self.reward, self.beta = low.reward, low.beta

    def __call__(self, ref, x_t, t, cond=None):
        high = t > self.t_switch
        drs = torch.zeros_like(x_t)
        if (~high).any():
            drs[~high] = self.low(ref, x_t[~high], t[~high], _select(cond, ~high)).drs
        if high.any():
            drs[high] = self.high(ref, x_t[high], t[high], _select(cond, high)).drs
        return DRSEstimate(drs)


def _select(cond, mask):
    if cond is None:
        return None
    if isinstance(cond, Tensor):
        return cond[mask]
    if isinstance(cond, dict):
        return {k: _select(v, mask) for k, v in cond.items()}
    if isinstance(cond, tuple):
        return tuple(_select(v, mask) for v in cond)
    return [c for c, keep in zip(cond, mask.tolist()) if keep]


class ExactMixtureDRS(DRSEstimator):
    """Exact DRS for a Gaussian-mixture reference, from (M9).

    p_ref(x_0 | x_t) is a mixture with closed-form components (see GaussianMixture.posterior);
    the tilted posterior mean integrates exp(r / beta) against each component with Gauss-Hermite
    quadrature, which is exact to many digits for smooth rewards at every t. A reward that varies
    along one direction w only (r = f(w . x), the toy rewards) needs the nodes along w alone, so it
    is exact in any dimension; any other reward uses a tensor-product grid (up to 3 dimensions).
    """

    needs_reward_grad = False

    def __init__(self, mixture: GaussianMixture, reward, beta, nodes: int | None = None):
        super().__init__(reward, beta)
        self.mixture = mixture
        direction = getattr(reward, "direction", None)
        if direction is not None:  # a ridge reward: 1-D nodes along the unit direction
            u = direction(mixture.dim)
            xi, w = np.polynomial.hermite.hermgauss(nodes or 96)
            self.xi = torch.tensor(xi, dtype=torch.float64)[:, None] * (u / u.norm())[None]  # (J, D)
            self.log_nodes_w = torch.tensor(np.log(w) - 0.5 * math.log(math.pi), dtype=torch.float64)
            return
        if mixture.dim > 3:
            raise ConfigError(f"the exact DRS of a reward without a direction needs a grid; {mixture.dim} dimensions are too many (at most 3)")
        nodes = nodes or (96 if mixture.dim == 1 else 24)
        xi, w = np.polynomial.hermite.hermgauss(nodes)
        grids = np.meshgrid(*([xi] * mixture.dim), indexing="ij")
        self.xi = torch.tensor(np.stack([g.reshape(-1) for g in grids], 1), dtype=torch.float64)  # (J, D)
        wgrid = np.meshgrid(*([w] * mixture.dim), indexing="ij")
        logw = sum(np.log(g.reshape(-1)) for g in wgrid) - 0.5 * mixture.dim * math.log(math.pi)
        self.log_nodes_w = torch.tensor(logw, dtype=torch.float64)  # (J,)

    def tilted_and_plain_means(self, x_t: Tensor, a: Tensor, s: Tensor) -> tuple[Tensor, Tensor]:
        post = self.mixture.posterior(x_t.reshape(x_t.shape[0], -1), a, s)
        b, k, d = post.means.shape
        pts = post.means[:, :, None, :] + (2 * post.variances)[:, :, None, None].sqrt() * self.xi[None, None]
        with torch.no_grad():
            r = call_reward(self.reward, pts.reshape(-1, d).float()).to(torch.float64).reshape(b, k, -1)
        logits = post.weights.clamp_min(1e-300).log()[:, :, None] + self.log_nodes_w[None, None] + r / self.beta
        w = torch.softmax(logits.reshape(b, -1), dim=1).reshape(b, k, -1, 1)
        tilted = (w * pts).sum((1, 2))
        return tilted, post.mean()

    @torch.no_grad()
    def __call__(self, ref, x_t, t, cond=None):
        a = ref.schedule.alpha(t).to(torch.float64).expand(x_t.shape[0])
        s = ref.schedule.sigma(t).to(torch.float64).expand(x_t.shape[0])
        tilted, plain = self.tilted_and_plain_means(x_t, a, s)
        drs = (a / s**2)[:, None] * (tilted - plain)
        return DRSEstimate(drs.to(x_t.dtype).reshape(x_t.shape))
