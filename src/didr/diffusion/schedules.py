"""Noise schedules of the forward process (M1): x_t = a(t) x_0 + s(t) eps, t in [0, 1].

Every schedule maps a continuous time t in [0, 1] (t = 0 is clean data) to the signal scale a(t)
and the noise scale s(t). Networks that want another time input (a discrete DDPM index, sigma,
1000 * sigma) get it from :meth:`NoiseSchedule.model_time`; nothing else in the library sees a
timestep convention.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from didr.errors import ConfigError


def _as_tensor(t: Tensor | float, like: Tensor | None = None) -> Tensor:
    if isinstance(t, Tensor):
        return t
    device = like.device if like is not None else None
    return torch.tensor(float(t), device=device)


def broadcast_to(v: Tensor, x: Tensor) -> Tensor:
    """Reshape a per-sample (B,) or scalar tensor so that it broadcasts against x (B, ...)."""
    v = v.to(device=x.device) if v.dtype == torch.bool else v.to(dtype=x.dtype, device=x.device)
    if v.ndim == 0:
        return v
    return v.reshape(v.shape + (1,) * (x.ndim - v.ndim))


class NoiseSchedule:
    """Base class: subclasses define ``alpha`` and ``sigma`` (M1) as differentiable tensor maps."""

    name = "base"
    #: smallest and largest t at which networks are trained and queried
    t_min: float = 1e-3
    t_max: float = 1.0

    def alpha(self, t: Tensor) -> Tensor:
        raise NotImplementedError

    def sigma(self, t: Tensor) -> Tensor:
        raise NotImplementedError

    def model_time(self, t: Tensor) -> Tensor:
        """The time value a network trained under this schedule's convention expects."""
        return t

    def add_noise(self, x0: Tensor, t: Tensor, eps: Tensor) -> Tensor:
        """x_t = a(t) x_0 + s(t) eps (M1); t is a scalar or a (B,) tensor."""
        t = _as_tensor(t, x0)
        return broadcast_to(self.alpha(t), x0) * x0 + broadcast_to(self.sigma(t), x0) * eps

    def snr(self, t: Tensor) -> Tensor:
        return (self.alpha(t) / self.sigma(t)) ** 2

    def prior_std(self) -> float:
        """Std of x_t at t = t_max for unit-scale data, used to draw the sampler's starting noise."""
        t = torch.tensor(self.t_max)
        return float(torch.sqrt(self.alpha(t) ** 2 + self.sigma(t) ** 2))

    def sampling_grid(self, n_steps: int) -> Tensor:
        """Decreasing times t_max = t_0 > ... > t_n = 0 for an n-step sampler."""
        return torch.linspace(self.t_max, 0.0, n_steps + 1)

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class VPCosineSchedule(NoiseSchedule):
    """Variance-preserving cosine schedule (Nichol & Dhariwal 2021): a = cos(pi t / 2) with a
    small offset, s = sqrt(1 - a^2), so a^2 + s^2 = 1 (M1, VP)."""

    name = "vp-cosine"

    def __init__(self, t_max: float = 0.999, t_min: float = 1e-3, offset: float = 0.008):
        self.t_max, self.t_min, self.offset = t_max, t_min, offset
        self._f0 = math.cos(offset / (1 + offset) * math.pi / 2)

    def alpha(self, t: Tensor) -> Tensor:
        t = _as_tensor(t)
        return torch.cos((t + self.offset) / (1 + self.offset) * math.pi / 2) / self._f0

    def sigma(self, t: Tensor) -> Tensor:
        a = self.alpha(t)
        return torch.sqrt((1 - a**2).clamp_min(1e-12))


class VPDiscreteSchedule(NoiseSchedule):
    """The discrete DDPM schedule of SD / SDXL ("scaled_linear" betas, 1000 steps) as a VP schedule.

    Discrete timestep n in {0, ..., N-1} sits at t = (n + 1) / N and t = 0 is clean data (a = 1),
    which is diffusers' ``set_alpha_to_one=True`` end point. Between grid points alpha_bar is
    interpolated linearly in log space, so any t in [0, 1] is valid.
    """

    name = "vp-discrete"

    def __init__(
        self,
        num_train_timesteps: int = 1000,
        beta_start: float = 0.00085,
        beta_end: float = 0.012,
        beta_schedule: str = "scaled_linear",
    ):
        n = num_train_timesteps
        if beta_schedule == "scaled_linear":
            betas = torch.linspace(beta_start**0.5, beta_end**0.5, n, dtype=torch.float64) ** 2
        elif beta_schedule == "linear":
            betas = torch.linspace(beta_start, beta_end, n, dtype=torch.float64)
        else:
            raise ConfigError(f"beta_schedule must be 'scaled_linear' or 'linear', got {beta_schedule!r}")
        alphas_cumprod = torch.cumprod(1.0 - betas, dim=0)
        self.num_train_timesteps = n
        self.alphas_cumprod = alphas_cumprod
        self._log_abar = torch.cat([torch.zeros(1, dtype=torch.float64), alphas_cumprod.log()])
        self.t_min, self.t_max = 1.0 / n, 1.0

    @classmethod
    def from_diffusers(cls, scheduler) -> "VPDiscreteSchedule":
        """Build from a diffusers scheduler (its ``config`` carries the beta schedule)."""
        cfg = scheduler.config
        return cls(cfg.num_train_timesteps, cfg.beta_start, cfg.beta_end, cfg.beta_schedule)

    def _log_alpha_bar(self, t: Tensor) -> Tensor:
        t = _as_tensor(t)
        pos = (t.to(torch.float64) * self.num_train_timesteps).clamp(0, self.num_train_timesteps)
        lo = pos.floor().long().clamp(max=self.num_train_timesteps - 1)
        frac = pos - lo
        table = self._log_abar.to(t.device)
        out = table[lo] * (1 - frac) + table[lo + 1] * frac
        return out.to(t.dtype if t.is_floating_point() else torch.float32)

    def alpha(self, t: Tensor) -> Tensor:
        return torch.exp(0.5 * self._log_alpha_bar(t))

    def sigma(self, t: Tensor) -> Tensor:
        return torch.sqrt((1 - torch.exp(self._log_alpha_bar(t))).clamp_min(1e-12))

    def model_time(self, t: Tensor) -> Tensor:
        """The (fractional) diffusers timestep index: t = (n + 1) / N  <=>  n = N t - 1."""
        return t * self.num_train_timesteps - 1

    def t_from_timestep(self, n: Tensor | int) -> Tensor:
        return (torch.as_tensor(n, dtype=torch.float32) + 1) / self.num_train_timesteps


class FlowMatchingSchedule(NoiseSchedule):
    """Rectified flow / flow matching (M1): a = 1 - t, s = t (SD3, Flux, Z-Image).

    ``shift`` is the time shift of SD3 and Z-Image: it changes where samplers and training put
    their times, t' = shift t / (1 + (shift - 1) t), not the forward process itself.
    ``time_scale`` is what the network is fed per unit of t (1000 for SD3 / Flux, 1 for Z-Image).
    """

    name = "flow"

    def __init__(self, shift: float = 1.0, time_scale: float = 1.0, t_min: float = 1e-3, t_max: float = 1.0):
        if shift <= 0:
            raise ConfigError(f"flow-matching shift must be > 0, got {shift}")
        self.shift, self.time_scale, self.t_min, self.t_max = shift, time_scale, t_min, t_max

    def alpha(self, t: Tensor) -> Tensor:
        return 1 - _as_tensor(t)

    def sigma(self, t: Tensor) -> Tensor:
        return _as_tensor(t) + 0.0

    def model_time(self, t: Tensor) -> Tensor:
        return t * self.time_scale

    def shift_time(self, t: Tensor) -> Tensor:
        """Uniform time u -> the schedule's time t = shift u / (1 + (shift - 1) u)."""
        return self.shift * t / (1 + (self.shift - 1) * t)

    def unshift_time(self, t: Tensor) -> Tensor:
        """The inverse of :meth:`shift_time`: u = t / (shift - (shift - 1) t)."""
        return t / (self.shift - (self.shift - 1) * t)

    def sampling_grid(self, n_steps: int) -> Tensor:
        return self.shift_time(torch.linspace(self.t_max, 0.0, n_steps + 1))

    def __repr__(self) -> str:
        return f"FlowMatchingSchedule(shift={self.shift}, time_scale={self.time_scale})"


class EDMSchedule(NoiseSchedule):
    """Variance-exploding schedule in EDM's parameterisation (M1, VE): a = 1, s = sigma(t), with
    sigma log-linear from sigma_min (t = 0) to sigma_max (t = 1). The network is fed sigma."""

    name = "ve"

    def __init__(self, sigma_min: float = 0.002, sigma_max: float = 80.0, t_min: float = 0.0, t_max: float = 1.0):
        if not 0 < sigma_min < sigma_max:
            raise ConfigError(f"need 0 < sigma_min < sigma_max, got {sigma_min}, {sigma_max}")
        self.sigma_min, self.sigma_max, self.t_min, self.t_max = sigma_min, sigma_max, t_min, t_max

    def alpha(self, t: Tensor) -> Tensor:
        return torch.ones_like(_as_tensor(t, None), dtype=torch.float32)

    def sigma(self, t: Tensor) -> Tensor:
        t = _as_tensor(t)
        return self.sigma_min * (self.sigma_max / self.sigma_min) ** t

    def model_time(self, t: Tensor) -> Tensor:
        return self.sigma(t)

    def sampling_grid(self, n_steps: int) -> Tensor:
        # Ends at t = 0 meaning *clean*; the last step lands on the denoised estimate.
        return torch.linspace(self.t_max, 0.0, n_steps + 1)


def make_schedule(kind: str, **kwargs) -> NoiseSchedule:
    """Build a schedule by name: ``vp-cosine``, ``vp-discrete``, ``flow``, ``ve``."""
    table = {
        "vp-cosine": VPCosineSchedule,
        "vp-discrete": VPDiscreteSchedule,
        "flow": FlowMatchingSchedule,
        "ve": EDMSchedule,
    }
    if kind not in table:
        raise ConfigError(f"unknown schedule {kind!r}; choose one of {', '.join(table)}")
    return table[kind](**kwargs)
