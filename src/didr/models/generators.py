"""One-step and few-step generators g_theta(z, c) -> x_0 built on a Denoiser (docs/method.md §1).

A generator runs its network's Denoiser (M2) from the noise z, placed at time ``times[0]``, through
the decreasing ``times``: at each time t_k it predicts x0_k = D(x_k, t_k), then moves x0_k to the
next time t_{k+1} (``renoise``); the last prediction is the sample. One time is the one-step case:

- DMD2's SDXL UNet: x_0 = D(z, t = 0.4), its fixed timestep 399 (t = (n + 1) / N);
- Z-Image-Turbo at one step: x_0 = D(z, t = 1);
- the reference itself at a fixed noise level t_gen: x_0 = D_ref(z, t_gen).

Several times give a few-step generator (the paper's 4-step Z-Image). ``renoise`` is how a step's
prediction reaches the next time:

- ``ddim``: x_{k+1} = a_{k+1} x0_k + s_{k+1} eps_k with the noise the step implies,
  eps_k = (x_k - a_k x0_k) / s_k: deterministic DDIM, which for flow matching is the Euler step of
  ZImagePipeline's FlowMatchEulerDiscreteScheduler;
- ``fresh``: the same with new Gaussian noise, as DMD2 samples its 4-step SDXL generator (and as
  diffusers' LCMScheduler does).

Training a few-step generator (module in training mode) follows DMD2's backward simulation
(Yin et al. 2024; ``--backward_simulation`` in its code): each call draws one step k uniformly,
runs the generator's own first k steps from z without gradient, exactly as sampling would, and
returns step k's prediction x0_k with its gradient. So every step learns on the inputs it will
meet when sampling, and an objective sees one batch of generator samples as before. In eval mode
every step runs (sampling, the export). ``unrolled=True`` instead back-propagates through all
steps at once (``checkpoint`` recomputes each step's activations in the backward pass).
"""

from __future__ import annotations

from typing import Any, Callable

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint as grad_checkpoint

from didr.diffusion.samplers import ddim_step
from didr.errors import ConfigError

RENOISE = ("ddim", "fresh")


class StepGenerator(nn.Module):
    """g(z, c): the Denoiser's steps through ``times`` (decreasing, in (0, 1]) and on to t = 0."""

    def __init__(self, denoiser: nn.Module, times: list[float], checkpoint: bool = False, renoise: str = "ddim", unrolled: bool = False):
        super().__init__()
        times = [float(t) for t in times]
        if not times or any(not 0 < t <= 1 for t in times) or any(a <= b for a, b in zip(times, times[1:])):
            raise ConfigError(f"generator times must be decreasing and in (0, 1], got {times}")
        if renoise not in RENOISE:
            raise ConfigError(f"generator renoise must be one of {', '.join(RENOISE)}, got {renoise!r}")
        self.denoiser, self.times, self.checkpoint = denoiser, times, checkpoint
        self.renoise, self.unrolled = renoise, unrolled

    @property
    def schedule(self):
        return self.denoiser.schedule

    @property
    def steps(self) -> int:
        return len(self.times)

    def forward(self, z: Tensor, cond: Any = None, noise: torch.Generator | None = None) -> Tensor:
        if self.training and self.steps > 1 and not self.unrolled:
            return self.train_one_step(z, cond)
        return self.sample(z, cond, noise)

    def sample(self, z: Tensor, cond: Any = None, noise: torch.Generator | None = None) -> Tensor:
        """Every step from z; gradients flow through all of them when enabled. ``noise``: the stream
        that ``fresh`` re-noising draws from, as a stock pipeline's ``generator`` (which drew z
        first); None: the global one."""
        x = z
        for t, t_next in zip(self.times, self.times[1:] + [0.0]):
            tt, tn = torch.tensor(t, device=z.device), torch.tensor(t_next, device=z.device)
            if self.checkpoint and torch.is_grad_enabled() and self.steps > 1 and noise is None:  # a recomputed step would redraw from `noise`
                x = grad_checkpoint(self.step, x, tt, tn, cond, use_reentrant=False)
            else:
                x = self.step(x, tt, tn, cond, noise)
        return x

    def step(self, x: Tensor, t: Tensor, t_next: Tensor, cond: Any = None, noise: torch.Generator | None = None) -> Tensor:
        """x0 = D(x, t), moved to ``t_next`` by the ``renoise`` rule (x0 itself at t_next = 0)."""
        if self.renoise == "ddim":
            return ddim_step(self.denoiser, x, t, t_next, cond)[0]
        x0 = self.denoiser(x, t.expand(x.shape[0]), cond)
        if float(t_next) <= 0:
            return x0
        eps = torch.randn(x0.shape, generator=noise, dtype=x0.dtype, device=noise.device if noise is not None else x0.device).to(x0.device)
        return self.schedule.add_noise(x0, t_next.expand(x.shape[0]), eps)

    def train_one_step(self, z: Tensor, cond: Any = None) -> Tensor:
        """DMD2's backward simulation: step k's prediction from the state its first k steps reach."""
        k = self.pick_step(z.device)
        with torch.no_grad():
            x = self.step_input(z, cond, k)
        t = torch.full((z.shape[0],), self.times[k], device=z.device)
        return self.denoiser(x, t, cond)

    def pick_step(self, device: torch.device) -> int:
        """A step index, uniform, the same on every process: sharded wrappers (FSDP) gather their
        weights at each call, so all processes must make the same calls (DMD2 broadcasts it too)."""
        k = torch.randint(self.steps, (1,), device=device)
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            dist.broadcast(k, src=0)
        return int(k)

    def step_input(self, z: Tensor, cond: Any, k: int) -> Tensor:
        """The state at ``times[k]``: the generator's own first k steps from z."""
        x = z
        for t, t_next in zip(self.times[:k], self.times[1 : k + 1]):
            x = self.step(x, torch.tensor(t, device=z.device), torch.tensor(t_next, device=z.device), cond)
        return x


class ForwardNoisedSteps(StepGenerator):
    """DMD2 without backward simulation: step k > 0 trains on data noised to its time,
    a(t_k) x_0 + s(t_k) eps with x_0 = ``data(n)``, instead of the generator's own states.
    It needs samples of the data (DMD2 uses real images); the toy compares it with
    :class:`StepGenerator`'s backward simulation, which needs none."""

    def __init__(self, denoiser: nn.Module, times: list[float], data: Callable[[int], Tensor], **kw):
        super().__init__(denoiser, times, **kw)
        self.data = data

    def step_input(self, z: Tensor, cond: Any, k: int) -> Tensor:
        if k == 0:
            return z
        x0 = self.data(z.shape[0]).to(z)
        return self.schedule.add_noise(x0, torch.full((z.shape[0],), self.times[k], device=z.device), torch.randn_like(z))


def generator_times(schedule, t_start: float, steps: int, times: list[float] | None = None) -> list[float]:
    """Explicit ``times``, else ``steps`` times from ``t_start`` on the schedule's sampling grid
    (shifted for flow matching, as the backbones' own schedulers place them)."""
    if times:
        return [float(t) for t in times]
    grid = schedule.sampling_grid(steps) if t_start >= 1.0 else torch.linspace(t_start, 0.0, steps + 1)
    return [float(t) for t in grid[:-1]]
