"""Generator objectives: DI, DI++, DIDR, DMD (with or without an endpoint reward) and ReFL, one small class each (docs/method.md §3).

Every objective has the same call, ``objective(x0, cond, ref, ta, z=None) -> (loss, logs)``, where
x0 are generator samples carrying the generator's graph, ``ref`` the frozen reference Denoiser (with
CFG already applied, M4), ``ta`` the teaching assistant and ``z`` the generator's input noise. Objectives only see t in [0, 1] and the
schedule's a(t), s(t): never a network's timestep convention.

Score-distillation objectives differ only in ``target_x0``: the denoised estimate whose score
(M3) is the target. The surrogate loss's gradient is (M11):
    grad = E[ omega(t) (s_ta - s_target)^T dx_t/dtheta ],  s_ta - s_target = a/s^2 (D_ta - D_target).
"""

from __future__ import annotations

from typing import Any, Callable

import torch
from torch import Tensor

from didr.diffusion.losses import sample_times
from didr.diffusion.schedules import NoiseSchedule, broadcast_to
from didr.errors import ConfigError, RewardError
from didr.objectives.drs import DRSEstimator, require_finite
from didr.rewards.base import call_reward, is_differentiable, reward_name

#: omega(t) of (M10)-(M11), in units chosen so that "x0" makes the gradient with respect to x_0
#: equal D_ta - D_target (the DMD / SiD convention).
OMEGAS: dict[str, Callable[[Tensor, Tensor], Tensor]] = {
    "x0": lambda a, s: s**2 / a**2,
    "score": lambda a, s: torch.ones_like(a),
    "snr": lambda a, s: s**2 / a,
}


def equal_push_alpha(schedule: NoiseSchedule, beta: float, omega: str = "x0", t_min=None, t_max=None, samples: int = 200_000) -> float:
    """The DI++ endpoint weight whose reward push on x_0, averaged over the generator's noise
    levels, equals DIDR's at temperature ``beta`` where the data are smooth at the noise scale.

    DIDR's reward part of the x_0 gradient is -omega a^2/s^2 (s^2/a) DRS, and with (M13)
    (s^2/a) DRS ~ Cov[x_0 | x_t] grad r / beta ~ (s/a)^2 grad r / beta, it is -omega(t) grad r / beta
    in the units of OMEGAS. DI++ pushes by -alpha grad r, so alpha = E_t[omega(t)] / beta, with t
    drawn as the objective draws it. Under "x0" weighting on the toy's t <= 0.4 that is about
    0.2 for beta = 0.72; under "score" weighting it is 1 / beta. On thin data Cov is small across
    the data, so DIDR's push is smaller there: this is a starting point for a sweep, not a match.
    """
    t = sample_times(samples, schedule, generator=torch.Generator().manual_seed(0), t_min=t_min, t_max=t_max)
    a, s = schedule.alpha(t).double(), schedule.sigma(t).double()
    return float(OMEGAS[omega](a, s).mean()) / beta


class Objective:
    """Base: ``uses_ta`` tells the training loop whether to run TA updates."""

    uses_ta = True
    name = "objective"

    def __call__(self, x0: Tensor, cond: Any, ref, ta, z: Tensor | None = None) -> tuple[Tensor, dict[str, float]]:  # pragma: no cover
        raise NotImplementedError


class ScoreDistillation(Objective):
    """Diff-Instruct (M11) with target D_ref: the DI baseline, and the base of DI++ / DIDR / DMD.

    ``omega``: the weighting of (M10), one of ``x0`` (default), ``score``, ``snr``.
    ``normalise``: DMD2's per-sample normalisation, dividing by mean |x_0 - D_target|.
    ``t_min`` / ``t_max``: the range of generator noise levels in the schedule's own time, the t
    that a(t) and s(t) see (after any flow shift); defaults: the schedule's range, which bounds them.
    """

    name = "di"

    def __init__(self, schedule: NoiseSchedule, *, omega: str = "x0", normalise: bool = False, t_min=None, t_max=None):
        if omega not in OMEGAS:
            raise ConfigError(f"unknown omega {omega!r}; choose one of {', '.join(OMEGAS)}")
        self.schedule, self.omega, self.normalise = schedule, OMEGAS[omega], normalise
        self.t_min, self.t_max = t_min, t_max
        check_time_range(schedule, t_min, t_max)

    def target_x0(self, x_t: Tensor, t: Tensor, cond: Any, ref) -> tuple[Tensor, dict[str, float]]:
        with torch.no_grad():
            return require_finite(ref(x_t, t, cond), "the reference's denoised estimate", t), {}

    def __call__(self, x0, cond, ref, ta, z=None):
        b = x0.shape[0]
        t = sample_times(b, self.schedule, device=x0.device, t_min=self.t_min, t_max=self.t_max)
        x_t = self.schedule.add_noise(x0, t, torch.randn_like(x0))
        with torch.no_grad():
            d_ta = require_finite(ta(x_t.detach(), t, cond), "the TA's denoised estimate", t)
        d_target, logs = self.target_x0(x_t.detach(), t, cond, ref)
        a, s = broadcast_to(self.schedule.alpha(t), x0), broadcast_to(self.schedule.sigma(t), x0)
        grad = self.omega(a, s) * a / s**2 * (d_ta - d_target)  # omega (s_ta - s_target)
        if self.normalise:
            scale = (x0.detach() - d_target).abs().reshape(b, -1).mean(1).clamp_min(1e-6)
            grad = grad / broadcast_to(scale, grad)
        # a NaN here must skip the step (the loop's guard), not become a zero push
        grad = require_finite(grad.detach(), "the weighted score difference omega(t) a/s^2 (D_ta - D_target)", t)
        loss = (grad * x_t).reshape(b, -1).sum(1).mean()
        logs = {**logs, "grad_norm": float(grad.reshape(b, -1).norm(dim=1).mean())}
        return loss, logs


def check_time_range(schedule: NoiseSchedule, t_min: float | None, t_max: float | None) -> None:
    """Refuse a generator time range that is reversed or leaves the schedule's [t_min, t_max]
    (beyond it a(t) or s(t) reach 0 and the score difference is not finite)."""
    lo = schedule.t_min if t_min is None else float(t_min)
    hi = schedule.t_max if t_max is None else float(t_max)
    if lo > hi:
        raise ConfigError(f"generator time range: t_min = {lo:g} > t_max = {hi:g}")
    for name, v in (("t_min", lo), ("t_max", hi)):
        if not schedule.t_min <= v <= schedule.t_max:
            raise ConfigError(f"generator time range: {name} = {v:g} lies outside the {schedule.name} schedule's "
                              f"[{schedule.t_min:g}, {schedule.t_max:g}]; null means the schedule's own bound")


class DI(ScoreDistillation):
    """Diff-Instruct: (M11) with no reward (the beta -> infinity limit of DIDR)."""

    name = "di"


class DMD(ScoreDistillation):
    """DMD-style distribution matching: (M11) with DMD2's per-sample normalisation."""

    name = "dmd"

    def __init__(self, schedule, **kw):
        kw.setdefault("normalise", True)
        super().__init__(schedule, **kw)


class DIPlusPlus(ScoreDistillation):
    """DI++: (M11) without DRS, plus -alpha E[r(g(z))] at the endpoint x_0 only."""

    name = "dipp"

    def __init__(self, schedule, reward: Callable, alpha: float, **kw):
        super().__init__(schedule, **kw)
        if alpha < 0:
            raise ConfigError(f"DI++ reward weight alpha must be >= 0, got {alpha}")
        if alpha > 0:
            require_reward_gradient(reward, "DI++'s endpoint term -alpha E[r]")
        self.reward, self.alpha = reward, float(alpha)

    def __call__(self, x0, cond, ref, ta, z=None):
        loss, logs = super().__call__(x0, cond, ref, ta, z)
        r = call_reward(self.reward, x0, cond)
        return loss - self.alpha * r.mean(), {**logs, "reward": float(r.mean().detach())}


class DMDReward(DIPlusPlus):
    """DMD with an endpoint reward: DMD2's normalised (M11) plus -alpha E[r(g(z))], as in DI++.
    The normalisation changes the scale of the distribution-matching term, so alpha here has no
    fixed relation to DI++'s alpha or to beta: sweep it."""

    name = "dmdr"

    def __init__(self, schedule, reward: Callable, alpha: float, **kw):
        kw.setdefault("normalise", True)
        super().__init__(schedule, reward, alpha, **kw)


class DIDR(ScoreDistillation):
    """DIDR: (M11) with the tilted target s_ref + DRS (M8) at every noise level.

    In x_0 units the target is D_ref + s^2 / a * DRS. The reward strength is beta alone, set on
    the DRS estimator.
    """

    name = "didr"

    def __init__(self, schedule, estimator: DRSEstimator, **kw):
        super().__init__(schedule, **kw)
        self.estimator = estimator

    def target_x0(self, x_t, t, cond, ref):
        est = self.estimator(ref, x_t, t, cond)
        d_ref = est.x0_ref
        if d_ref is None:
            with torch.no_grad():
                d_ref = ref(x_t, t, cond)
        require_finite(d_ref, "the reference's denoised estimate", t)  # before the DRS, which it feeds
        drs = require_finite(est.drs.detach(), f"the DRS estimator's ({type(self.estimator).__name__}) diffused reward score", t)
        a, s = broadcast_to(self.schedule.alpha(t), x_t), broadcast_to(self.schedule.sigma(t), x_t)
        return d_ref + s**2 / a * drs, {"drs_norm": float(drs.reshape(drs.shape[0], -1).norm(dim=1).mean())}


class ReFL(Objective):
    """ReFL-style direct reward fine-tuning: -E[r(g(z))], optionally plus ``reg_weight`` times a
    regression of g(z) onto a frozen copy of the initial generator at the same z (the initial
    generator is the teacher's one-step distillation, so this is regression to the teacher).

    A regulariser without its target is refused here rather than dropped at every step."""

    uses_ta = False
    name = "refl"

    def __init__(self, reward: Callable, reg_weight: float = 0.0, initial_generator=None):
        require_reward_gradient(reward, "ReFL")
        if reg_weight > 0 and initial_generator is None:
            raise ConfigError(f"ReFL's regulariser (weight {reg_weight:g}) needs the frozen initial generator, and none was given")
        self.reward, self.reg_weight, self.initial_generator = reward, float(reg_weight), initial_generator

    def __call__(self, x0, cond, ref, ta, z=None):
        r = call_reward(self.reward, x0, cond)
        loss = -r.mean()
        logs = {"reward": float(r.mean().detach())}
        if self.reg_weight > 0:
            if z is None:
                raise ValueError("ReFL's regulariser needs the generator's input z (call objective(x0, cond, ref, ta, z=z))")
            with torch.no_grad():
                target = self.initial_generator(z, cond)
            reg = ((x0 - target) ** 2).reshape(x0.shape[0], -1).mean(1).mean()
            loss = loss + self.reg_weight * reg
            logs["reg"] = float(reg.detach())
        return loss, logs


def require_reward_gradient(reward: Callable, who: str) -> None:
    """Refuse a reward without a gradient where the loss differentiates it (its term would be a constant)."""
    if not is_differentiable(reward):
        raise RewardError(f"reward {reward_name(reward)!r} has no gradient; {who} needs one (DIDR with drs: mc does not)")
