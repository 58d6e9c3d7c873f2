"""Small MLP networks for low-dimensional experiments: a preconditioned denoiser and a generator."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from didr.diffusion.schedules import NoiseSchedule, broadcast_to
from didr.models.denoiser import Denoiser, per_sample_time


class FourierEmbedding(nn.Module):
    """Sinusoidal features of a scalar noise level."""

    def __init__(self, dim: int = 64, max_period: float = 100.0):
        super().__init__()
        half = dim // 2
        self.register_buffer("freqs", torch.exp(-math.log(max_period) * torch.arange(half) / half), persistent=False)

    def forward(self, c: Tensor) -> Tensor:
        arg = c[:, None] * self.freqs[None] * 10
        return torch.cat([arg.sin(), arg.cos()], dim=1)


class ConditionedMLP(nn.Module):
    """h = SiLU(W_x x + W_e emb), then an MLP. Separate input projections keep the data's weights
    at Linear's unit-fan-in scale, so a 1-D input is not drowned by 64 embedding features."""

    def __init__(self, d_in: int, d_emb: int, d_out: int, hidden: int, depth: int):
        super().__init__()
        self.x_proj, self.e_proj = nn.Linear(d_in, hidden), nn.Linear(d_emb, hidden, bias=False)
        self.body = mlp(hidden, d_out, hidden, depth - 1) if depth > 1 else nn.Linear(hidden, d_out)

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:
        return self.body(F.silu(self.x_proj(x) + self.e_proj(emb)))


def mlp(d_in: int, d_out: int, hidden: int, depth: int) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i in range(depth):
        layers += [nn.Linear(d_in if i == 0 else hidden, hidden), nn.SiLU()]
    layers.append(nn.Linear(hidden, d_out))
    return nn.Sequential(*layers)


class MLPDenoiser(Denoiser):
    """An MLP behind EDM's preconditioning generalised to scaled schedules (Karras et al. 2022,
    Table 1, with x_t = a x_0 + s eps): with v = a^2 sigma_d^2 + s^2,
    D = c_skip x_t + c_out F(c_in x_t, log(s / a)), c_in = 1/sqrt(v), c_skip = a sigma_d^2 / v,
    c_out = s sigma_d / sqrt(v). Inputs and targets of F then have unit variance at every t."""

    def __init__(self, schedule: NoiseSchedule, dim: int, hidden: int = 128, depth: int = 3, sigma_data: float = 1.0, n_classes: int = 0):
        super().__init__(schedule)
        self.dim, self.sigma_data = dim, float(sigma_data)
        self.embed = FourierEmbedding(64)
        self.class_embed = nn.Embedding(n_classes + 1, 64) if n_classes else None  # last index: null
        self.net = ConditionedMLP(dim, 64, dim, hidden, depth)

    def dsm_weight(self, t: Tensor) -> Tensor:
        """EDM's lambda = 1 / c_out^2: every noise level weighs the same on F's unit-variance target."""
        a, s = self.schedule.alpha(t), self.schedule.sigma(t)
        return (a**2 * self.sigma_data**2 + s**2) / (s * self.sigma_data) ** 2

    def forward(self, x_t: Tensor, t: Tensor, cond=None) -> Tensor:
        t = per_sample_time(t, x_t)
        a, s = self.schedule.alpha(t), self.schedule.sigma(t)
        sd = self.sigma_data
        v = a**2 * sd**2 + s**2
        c_in, c_skip, c_out = v.rsqrt(), a * sd**2 / v, s * sd * v.rsqrt()
        emb = self.embed(torch.log(s / a) / 4)
        if self.class_embed is not None and cond is not None:
            emb = emb + self.class_embed(cond)
        f = self.net(broadcast_to(c_in, x_t) * x_t, emb)
        return broadcast_to(c_skip, x_t) * x_t + broadcast_to(c_out, x_t) * f


class MLPGenerator(nn.Module):
    """One-step generator g(z) -> x_0 for points: an MLP with a linear skip from the noise."""

    def __init__(self, dim: int, hidden: int = 128, depth: int = 3):
        super().__init__()
        self.dim = dim
        self.net = mlp(dim, dim, hidden, depth)
        self.skip = nn.Linear(dim, dim)

    def forward(self, z: Tensor, cond=None) -> Tensor:
        return self.skip(z) + self.net(z)
