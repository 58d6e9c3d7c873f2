"""Samplers: pure functions of a Denoiser (M2) and a time grid, k-diffusion style.

Times are in [0, 1] and may be per sample: each entry of ``ts`` is a scalar or a (B,) tensor, so
the DRP estimator (M12) can denoise a batch whose samples start at different noise levels. A step
to t = 0 returns the denoised estimate itself (a = 1, s = 0).

- :func:`ddim_step` / :func:`ddim_sample`: deterministic DDIM (Song et al. 2021, eq. 12 with
  eta = 0), x_next = a_next D + s_next eps_hat, eps_hat = (x_t - a D) / s.
- :func:`flow_euler_sample`: Euler on the rectified-flow ODE dx/dt = u = (x_t - D) / t; for
  a = 1 - t, s = t it is algebraically the same update as DDIM.
- :func:`ancestral_sample`: the DDPM posterior q(x_next | x_t, x_0 = D) for any (a, s) schedule
  (Kingma et al. 2021, VDM eq. 28-31), used to draw x_0 ~ p_ref(x_0 | x_t) for Monte-Carlo DRS (M9).
"""

from __future__ import annotations

from typing import Any, Sequence

import torch
from torch import Tensor

from didr.diffusion.schedules import NoiseSchedule, broadcast_to


def _coeffs(schedule: NoiseSchedule, t: Tensor, x: Tensor) -> tuple[Tensor, Tensor]:
    return broadcast_to(schedule.alpha(t), x), broadcast_to(schedule.sigma(t), x)


def _times(t: Tensor | float, x: Tensor) -> Tensor:
    t = torch.as_tensor(t, dtype=torch.float32, device=x.device)
    return t.expand(x.shape[0]) if t.ndim == 0 else t


def time_grid(t_start: Tensor | float, n_steps: int, t_end: float = 0.0) -> list[Tensor]:
    """n_steps + 1 times evenly spaced from t_start (scalar or per-sample) down to t_end."""
    t_start = torch.as_tensor(t_start, dtype=torch.float32)
    return [t_start + (t_end - t_start) * (i / n_steps) for i in range(n_steps + 1)]


def ddim_step(denoiser, x: Tensor, t: Tensor, t_next: Tensor, cond: Any = None) -> tuple[Tensor, Tensor]:
    """One deterministic DDIM step from t to t_next; returns (x_next, x0_hat)."""
    schedule = denoiser.schedule
    t, t_next = _times(t, x), _times(t_next, x)
    x0 = denoiser(x, t, cond)
    a, s = _coeffs(schedule, t, x)
    a_n, s_n = _coeffs(schedule, t_next, x)
    eps = (x - a * x0) / s
    clean = broadcast_to(t_next <= 0, x)
    return torch.where(clean, x0, a_n * x0 + s_n * eps), x0


def ddim_sample(denoiser, x: Tensor, ts: Sequence[Tensor | float], cond: Any = None) -> Tensor:
    """Run DDIM through the decreasing times ``ts`` (each scalar or (B,)); returns the last state."""
    for t, t_next in zip(ts[:-1], ts[1:]):
        x, _ = ddim_step(denoiser, x, t, t_next, cond)
    return x


def flow_euler_step(denoiser, x: Tensor, t: Tensor, t_next: Tensor, cond: Any = None) -> Tensor:
    """One Euler step of the flow ODE with velocity u = (x_t - D) / s (flow-matching schedules)."""
    t, t_next = _times(t, x), _times(t_next, x)
    x0 = denoiser(x, t, cond)
    s = broadcast_to(denoiser.schedule.sigma(t), x)
    u = (x - x0) / s
    return x + broadcast_to(t_next - t, x) * u


def flow_euler_sample(denoiser, x: Tensor, ts: Sequence[Tensor | float], cond: Any = None) -> Tensor:
    """Euler sampler for flow matching (FlowMatchEulerDiscreteScheduler's update)."""
    for t, t_next in zip(ts[:-1], ts[1:]):
        x = flow_euler_step(denoiser, x, t, t_next, cond)
    return x


def ancestral_step(
    denoiser, x: Tensor, t: Tensor, t_next: Tensor, cond: Any = None, generator: torch.Generator | None = None
) -> Tensor:
    """Sample x_next ~ q(x_next | x_t, x_0 = D(x_t, t)) for a general (a, s) schedule.

    With a_{t|n} = a_t / a_n and s2_{t|n} = s_t^2 - a_{t|n}^2 s_n^2:
    mean = a_{t|n} s_n^2 / s_t^2 x_t + a_n s2_{t|n} / s_t^2 x_0,  var = s2_{t|n} s_n^2 / s_t^2.
    """
    schedule = denoiser.schedule
    t, t_next = _times(t, x), _times(t_next, x)
    x0 = denoiser(x, t, cond)
    a, s = _coeffs(schedule, t, x)
    a_n, s_n = _coeffs(schedule, t_next, x)
    a_tn = a / a_n
    s2_tn = (s**2 - a_tn**2 * s_n**2).clamp_min(0)
    mean = a_tn * s_n**2 / s**2 * x + a_n * s2_tn / s**2 * x0
    std = torch.sqrt(s2_tn * s_n**2 / s**2)
    noise = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
    return torch.where(broadcast_to(t_next <= 0, x), x0, mean + std * noise)


def ancestral_sample(
    denoiser, x: Tensor, ts: Sequence[Tensor | float], cond: Any = None, generator: torch.Generator | None = None
) -> Tensor:
    """Stochastic (ancestral / DDPM) sampler: approximately x_0 ~ p(x_0 | x_{ts[0]}) as steps grow."""
    for t, t_next in zip(ts[:-1], ts[1:]):
        x = ancestral_step(denoiser, x, t, t_next, cond, generator)
    return x
