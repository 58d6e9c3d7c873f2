"""Small MLP networks for low-dimensional experiments: a preconditioned denoiser and a generator."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from didr.diffusion.denoiser import PreconditionedDenoiser
from didr.diffusion.schedules import NoiseSchedule


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


class MLPDenoiser(PreconditionedDenoiser):
    """An MLP behind EDM-style preconditioning (see :class:`PreconditionedDenoiser`), optionally
    class-conditional (the last class index is the null class of CFG)."""

    def __init__(self, schedule: NoiseSchedule, dim: int, hidden: int = 128, depth: int = 3, sigma_data: float = 1.0, n_classes: int = 0):
        super().__init__(schedule, sigma_data)
        self.dim = dim
        self.embed = FourierEmbedding(64)
        self.class_embed = nn.Embedding(n_classes + 1, 64) if n_classes else None  # last index: null
        self.net = ConditionedMLP(dim, 64, dim, hidden, depth)

    def network(self, x_in: Tensor, c_noise: Tensor, cond=None) -> Tensor:
        emb = self.embed(c_noise)
        if self.class_embed is not None and cond is not None:
            emb = emb + self.class_embed(cond)
        return self.net(x_in, emb)


class MLPGenerator(nn.Module):
    """One-step generator g(z) -> x_0 for points: an MLP with a linear skip from the noise."""

    def __init__(self, dim: int, hidden: int = 128, depth: int = 3):
        super().__init__()
        self.dim = dim
        self.net = mlp(dim, dim, hidden, depth)
        self.skip = nn.Linear(dim, dim)

    def forward(self, z: Tensor, cond=None) -> Tensor:
        return self.skip(z) + self.net(z)
