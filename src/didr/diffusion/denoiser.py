"""The one Denoiser interface (M2) and the adapters that bring any network to it.

A :class:`Denoiser` maps (x_t, t, cond) to the posterior mean E[x_0 | x_t, cond] (M2), with t in
[0, 1] under its ``schedule``. Samplers, losses and objectives only ever call a Denoiser, so they
never see whether the network predicts eps, v, x_0 or a flow velocity, nor which timestep
convention it was trained with. Each adapter overrides one method, ``to_x0``.
"""

from __future__ import annotations

from typing import Any, Callable

import torch
from torch import Tensor, nn

from didr.diffusion.schedules import NoiseSchedule, broadcast_to


class Denoiser(nn.Module):
    """Base interface: ``forward(x_t, t, cond) -> x0_hat`` (M2); ``score`` follows from (M3)."""

    def __init__(self, schedule: NoiseSchedule):
        super().__init__()
        self.schedule = schedule

    def forward(self, x_t: Tensor, t: Tensor, cond: Any = None) -> Tensor:  # pragma: no cover
        raise NotImplementedError

    def score(self, x_t: Tensor, t: Tensor, cond: Any = None) -> Tensor:
        """grad log p_t(x_t) = (a D - x_t) / s^2 (M3)."""
        return score_from_x0(self(x_t, t, cond), x_t, t, self.schedule)


def per_sample_time(t: Tensor | float, x: Tensor) -> Tensor:
    """Expand a scalar time to a (B,) tensor on x's device."""
    t = torch.as_tensor(t, dtype=torch.float32, device=x.device)
    return t.expand(x.shape[0]) if t.ndim == 0 else t


def score_from_x0(x0_hat: Tensor, x_t: Tensor, t: Tensor, schedule: NoiseSchedule) -> Tensor:
    """The score of (M3): (a(t) D(x_t, t) - x_t) / s(t)^2."""
    t = per_sample_time(t, x_t)
    a, s = broadcast_to(schedule.alpha(t), x_t), broadcast_to(schedule.sigma(t), x_t)
    return (a * x0_hat - x_t) / s**2


def x0_from_score(score: Tensor, x_t: Tensor, t: Tensor, schedule: NoiseSchedule) -> Tensor:
    """Inverse of (M3): D = (x_t + s^2 score) / a."""
    t = per_sample_time(t, x_t)
    a, s = broadcast_to(schedule.alpha(t), x_t), broadcast_to(schedule.sigma(t), x_t)
    return (x_t + s**2 * score) / a


class NetworkDenoiser(Denoiser):
    """Wraps ``net(x_t, model_time, cond) -> prediction`` and converts the prediction to x_0.

    ``call_net`` adapts the call signature (diffusers backbones override it); ``to_x0`` adapts the
    parameterisation. ``model_time`` comes from the schedule, so the net gets its own convention.
    """

    def __init__(self, net: nn.Module, schedule: NoiseSchedule):
        super().__init__(schedule)
        self.net = net

    def call_net(self, x_t: Tensor, t: Tensor, cond: Any) -> Tensor:
        return self.net(x_t, self.schedule.model_time(t), cond)

    def to_x0(self, out: Tensor, x_t: Tensor, a: Tensor, s: Tensor) -> Tensor:  # pragma: no cover
        raise NotImplementedError

    def forward(self, x_t: Tensor, t: Tensor, cond: Any = None) -> Tensor:
        t = per_sample_time(t, x_t)
        out = self.call_net(x_t, t, cond)
        a, s = broadcast_to(self.schedule.alpha(t), x_t), broadcast_to(self.schedule.sigma(t), x_t)
        return self.to_x0(out.to(x_t.dtype), x_t, a, s)


# Each parameterisation's ``dsm_weight(t)`` (picked up by ``dsm_loss``) turns the x_0-space error
# of (M5) into the loss the backbone was trained with: its own prediction's squared error.


class EpsDenoiser(NetworkDenoiser):
    """eps-prediction: x_0 = (x_t - s eps) / a."""

    def to_x0(self, out, x_t, a, s):
        return (x_t - s * out) / a

    def dsm_weight(self, t: Tensor) -> Tensor:
        """eps-MSE (SD / SDXL, DMD2's fake-score loss): eps_hat - eps = -(a / s)(D - x_0), so a^2 / s^2."""
        return (self.schedule.alpha(t) / self.schedule.sigma(t)) ** 2


class VDenoiser(NetworkDenoiser):
    """v-prediction (VP schedules, v = a eps - s x_0): x_0 = a x_t - s v."""

    def to_x0(self, out, x_t, a, s):
        return a * x_t - s * out

    def dsm_weight(self, t: Tensor) -> Tensor:
        """v-MSE: v_hat - v = -(D - x_0) / s, so 1 / s^2."""
        return self.schedule.sigma(t) ** -2


class X0Denoiser(NetworkDenoiser):
    """The network predicts x_0 directly."""

    def to_x0(self, out, x_t, a, s):
        return out

    def dsm_weight(self, t: Tensor) -> Tensor:
        """x_0-MSE: weight 1."""
        return torch.ones_like(t)


class FlowDenoiser(NetworkDenoiser):
    """Flow velocity u = eps - x_0 (a = 1 - s): x_t = x_0 + s u, so x_0 = x_t - s u.

    ``sign=-1`` serves backbones that predict x_0 - eps (Z-Image's transformer).
    """

    def __init__(self, net: nn.Module, schedule: NoiseSchedule, sign: float = 1.0):
        super().__init__(net, schedule)
        self.sign = sign

    def to_x0(self, out, x_t, a, s):
        return x_t - s * (self.sign * out)

    def dsm_weight(self, t: Tensor) -> Tensor:
        """Flow-velocity MSE (SD3, Flux, Z-Image): u_hat - u = -(D - x_0) / s, so 1 / s^2."""
        return self.schedule.sigma(t) ** -2


class PreconditionedDenoiser(Denoiser):
    """EDM's preconditioning (Karras et al. 2022, Table 1) generalised to x_t = a x_0 + s eps:
    with v = a^2 sigma_d^2 + s^2, D = c_skip x_t + c_out F(c_in x_t, c_noise, cond), where
    c_in = 1/sqrt(v), c_skip = a sigma_d^2 / v, c_out = s sigma_d / sqrt(v), c_noise = log(s/a) / 4.
    F's input and target then have unit variance at every t. Subclasses implement ``network``.
    """

    def __init__(self, schedule: NoiseSchedule, sigma_data: float):
        super().__init__(schedule)
        self.sigma_data = float(sigma_data)

    def network(self, x_in: Tensor, c_noise: Tensor, cond: Any) -> Tensor:  # pragma: no cover
        raise NotImplementedError

    def dsm_weight(self, t: Tensor) -> Tensor:
        """EDM's lambda = 1 / c_out^2 (picked up by ``dsm_loss``): every noise level weighs the same."""
        a, s = self.schedule.alpha(t), self.schedule.sigma(t)
        return (a**2 * self.sigma_data**2 + s**2) / (s * self.sigma_data) ** 2

    def forward(self, x_t: Tensor, t: Tensor, cond: Any = None) -> Tensor:
        t = per_sample_time(t, x_t)
        a, s = self.schedule.alpha(t), self.schedule.sigma(t)
        sd = self.sigma_data
        v = a**2 * sd**2 + s**2
        c_in, c_skip, c_out = v.rsqrt(), a * sd**2 / v, s * sd * v.rsqrt()
        f = self.network(broadcast_to(c_in, x_t) * x_t, torch.log(s / a) / 4, cond)
        return broadcast_to(c_skip, x_t) * x_t + broadcast_to(c_out, x_t) * f


PREDICTION_TYPES = {"epsilon": EpsDenoiser, "v_prediction": VDenoiser, "sample": X0Denoiser, "flow": FlowDenoiser}


class GuidedDenoiser(Denoiser):
    """Classifier-free guidance (M4). Scores are affine in D (M3), so guiding D with scale w is
    guiding the score: D~ = D(x | null) + w (D(x | c) - D(x | null)).

    ``null_cond`` builds the unconditional input from a conditional one. ``rescale``, where a
    backbone's pipeline renormalises its guided prediction (Z-Image's ``cfg_normalization``,
    Qwen-Image's true CFG), maps (x_t, s(t), guided D, conditional D) to the rescaled guided D, in
    whatever space the pipeline rescales; guidance is then no longer affine in the score.
    """

    def __init__(self, base: Denoiser, scale: float, null_cond, rescale: Callable[[Tensor, Tensor, Tensor, Tensor], Tensor] | None = None):
        super().__init__(base.schedule)
        self.base, self.scale, self.null_cond, self.rescale = base, float(scale), null_cond, rescale

    def forward(self, x_t, t, cond=None):
        if cond is None or self.scale == 1.0:
            return self.base(x_t, t, cond)
        t = per_sample_time(t, x_t)
        both = self.base(torch.cat([x_t, x_t]), torch.cat([t, t]), concat_cond(self.null_cond(cond), cond))
        uncond, conditional = both.chunk(2)
        guided = uncond + self.scale * (conditional - uncond)
        if self.rescale is None:
            return guided
        return self.rescale(x_t, broadcast_to(self.schedule.sigma(t), x_t), guided, conditional)


def concat_cond(a: Any, b: Any) -> Any:
    """Concatenate two conditioning batches (tensors, or dicts/lists of tensors) along the batch."""
    if isinstance(a, Tensor):
        return torch.cat([a, b])
    if isinstance(a, dict):
        return {k: concat_cond(a[k], b[k]) for k in a}
    if isinstance(a, tuple):  # structured fields, each batched
        return tuple(concat_cond(x, y) for x, y in zip(a, b))
    if isinstance(a, list):  # one item per sample
        return list(a) + list(b)
    raise TypeError(f"cannot batch conditioning of type {type(a).__name__}")
