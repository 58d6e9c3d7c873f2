"""Denoising score matching (M5) and the noise-level distributions it draws from."""

from __future__ import annotations

from typing import Any, Callable

import torch
from torch import Tensor

from didr.diffusion.schedules import NoiseSchedule


def sample_times(n: int, schedule: NoiseSchedule, *, device=None, generator=None, t_min=None, t_max=None) -> Tensor:
    """t ~ U[t_min, t_max] (defaults: the schedule's own range), passed through the flow shift if any."""
    lo = schedule.t_min if t_min is None else t_min
    hi = schedule.t_max if t_max is None else t_max
    u = torch.rand(n, device=device, generator=generator)
    t = lo + (hi - lo) * u
    shift = getattr(schedule, "shift_time", None)
    return shift(t) if shift is not None else t


def x0_weighting(schedule: NoiseSchedule, t: Tensor) -> Tensor:
    """lambda(t) = 1: plain x_0-space regression, the default for (M5)."""
    return torch.ones_like(t)


def dsm_loss(
    denoiser,
    x0: Tensor,
    t: Tensor,
    cond: Any = None,
    *,
    noise: Tensor | None = None,
    weighting: Callable[[NoiseSchedule, Tensor], Tensor] | None = None,
) -> Tensor:
    """Per-sample DSM loss (M5): lambda(t) || D(a x_0 + s eps, t) - x_0 ||^2, averaged over dims.

    ``weighting`` defaults to the denoiser's own ``dsm_weight(t)`` when it defines one (a
    preconditioned network's natural weighting), else lambda = 1. ``x0`` is detached: the TA
    tracks the generator's distribution but never pushes on it.
    """
    if weighting is None:
        own = getattr(denoiser, "dsm_weight", None)
        weighting = (lambda _s, tt: own(tt)) if own is not None else x0_weighting
    x0 = x0.detach()
    eps = torch.randn_like(x0) if noise is None else noise
    x_t = denoiser.schedule.add_noise(x0, t, eps)
    err = (denoiser(x_t, t, cond) - x0) ** 2
    per_sample = err.reshape(err.shape[0], -1).mean(dim=1)
    return weighting(denoiser.schedule, t) * per_sample
