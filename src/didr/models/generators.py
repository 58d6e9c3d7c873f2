"""One-step and few-step generators g_theta(z, c) -> x_0 built on a Denoiser (method.md §1).

A generator runs its network's Denoiser (M2) from the noise z placed at time ``times[0]`` through
the decreasing ``times`` to 0 with deterministic DDIM steps (flow Euler for flow matching: the same
update). One time is the one-step case:

- DMD2's SDXL UNet: x_0 = D(z, t = 0.4), its fixed timestep 399 (t = (n + 1) / N);
- Z-Image-Turbo at one step: x_0 = D(z, t = 1);
- the reference itself at a fixed noise level t_gen: x_0 = D_ref(z, t_gen).
Several times give a few-step generator (the paper's 4-step Z-Image); the gradient flows through
every step, and ``checkpoint`` recomputes each step's activations in the backward pass.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint as grad_checkpoint

from didr.diffusion.samplers import ddim_step
from didr.errors import ConfigError


class StepGenerator(nn.Module):
    """g(z, c): DDIM through ``times`` (decreasing, in (0, 1]) and on to t = 0."""

    def __init__(self, denoiser: nn.Module, times: list[float], checkpoint: bool = False):
        super().__init__()
        times = [float(t) for t in times]
        if not times or any(not 0 < t <= 1 for t in times) or any(a <= b for a, b in zip(times, times[1:])):
            raise ConfigError(f"generator times must be decreasing and in (0, 1], got {times}")
        self.denoiser, self.times, self.checkpoint = denoiser, times, checkpoint

    @property
    def schedule(self):
        return self.denoiser.schedule

    @property
    def steps(self) -> int:
        return len(self.times)

    def forward(self, z: Tensor, cond: Any = None) -> Tensor:
        x = z
        for t, t_next in zip(self.times, self.times[1:] + [0.0]):
            tt, tn = torch.tensor(t, device=z.device), torch.tensor(t_next, device=z.device)
            if self.checkpoint and torch.is_grad_enabled() and self.steps > 1:
                x, _ = grad_checkpoint(ddim_step, self.denoiser, x, tt, tn, cond, use_reentrant=False)
            else:
                x, _ = ddim_step(self.denoiser, x, tt, tn, cond)
        return x


def generator_times(schedule, t_start: float, steps: int, times: list[float] | None = None) -> list[float]:
    """Explicit ``times``, else ``steps`` times from ``t_start`` on the schedule's sampling grid
    (shifted for flow matching, as the backbones' own schedulers place them)."""
    if times:
        return [float(t) for t in times]
    grid = schedule.sampling_grid(steps) if t_start >= 1.0 else torch.linspace(t_start, 0.0, steps + 1)
    return [float(t) for t in grid[:-1]]
