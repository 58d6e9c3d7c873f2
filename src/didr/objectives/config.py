"""The ``method`` section of a run's config, and the one function that builds an objective from it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from didr.config import apply_overrides, from_dict, require, to_dict
from didr.diffusion.schedules import NoiseSchedule
from didr.errors import ConfigError
from didr.objectives.drs import DRPEstimator, DRSEstimator, ExactMixtureDRS, HybridDRS, MonteCarloDRS
from didr.objectives.methods import DI, DIDR, DMD, OMEGAS, DIPlusPlus, DMDReward, Objective, ReFL, equal_push_alpha

METHODS = ("di", "dipp", "didr", "dmd", "dmdr", "refl")
ESTIMATORS = ("drp", "mc", "hybrid", "exact")


@dataclass
class MethodConfig:
    """Which objective trains the generator, and its settings."""

    name: str = "didr"  # di | dipp | didr | dmd | dmdr (DMD + endpoint reward) | refl
    beta: float = 0.72  # DIDR's reward temperature (M6); the reward strength is 1 / beta
    alpha: float | None = None  # DI++ / dmdr endpoint reward weight; None: E_t[omega] / beta, the push of DIDR's (M13)
    drs: str = "drp"  # DRS estimator for DIDR: drp | mc | hybrid (DRP below t_switch, MC above) | exact (mixtures)
    drp_steps: int = 1  # k of (M12)
    drp_checkpoint: bool = False  # recompute the k reference calls in backward to bound memory
    mc_samples: int = 64  # posterior samples per x_t for Monte-Carlo DRS (M9)
    mc_sampler_steps: int = 25  # ancestral steps per posterior sample; fewer bias the DRS towards 0
    t_switch: float = 0.2  # hybrid estimator: Monte-Carlo above this t
    omega: str = "x0"  # generator weighting omega(t): x0 | score | snr
    normalise: bool = False  # DMD2's per-sample gradient normalisation
    t_min: float | None = None  # generator noise levels: lowest t, in the schedule's own time (the t that alpha(t) and
    t_max: float | None = None  # sigma(t) see, after any flow shift, which keeps its density); null = the schedule's bound
    refl_reg: float = 0.0  # ReFL: weight of the regression onto the initial generator

    @property
    def needs_initial_generator(self) -> bool:
        """Whether the objective regresses onto the frozen initial generator (ReFL with refl_reg > 0)."""
        return self.name == "refl" and self.refl_reg > 0

    def validate(self, path: str = "method") -> None:
        require(self.name in METHODS, f"{path}.name", f"unknown method {self.name!r}; choose one of {', '.join(METHODS)}")
        require(self.drs in ESTIMATORS, f"{path}.drs", f"unknown DRS estimator {self.drs!r}; choose one of {', '.join(ESTIMATORS)}")
        require(self.beta > 0, f"{path}.beta", f"must be > 0, got {self.beta}")
        require(self.alpha is None or self.alpha >= 0, f"{path}.alpha", f"must be >= 0, got {self.alpha}")
        require(self.drp_steps >= 1, f"{path}.drp_steps", f"must be >= 1, got {self.drp_steps}")
        require(self.mc_samples >= 2, f"{path}.mc_samples", f"must be >= 2, got {self.mc_samples}")
        require(self.mc_sampler_steps >= 1, f"{path}.mc_sampler_steps", f"must be >= 1, got {self.mc_sampler_steps}")
        require(0 < self.t_switch < 1, f"{path}.t_switch", f"must be in (0, 1), got {self.t_switch}")
        require(self.omega in OMEGAS, f"{path}.omega", f"unknown weighting {self.omega!r}; choose one of {', '.join(OMEGAS)}")
        require(self.refl_reg >= 0, f"{path}.refl_reg", f"must be >= 0, got {self.refl_reg}")
        for name in ("t_min", "t_max"):
            v = getattr(self, name)
            require(v is None or 0 < v <= 1, f"{path}.{name}", f"must be in (0, 1], got {v}")
        if self.t_min is not None and self.t_max is not None:
            require(self.t_min <= self.t_max, f"{path}.t_min", f"must be <= t_max = {self.t_max}, got {self.t_min}")


def parse_method_spec(spec: str, base: MethodConfig) -> tuple[str, MethodConfig]:
    """``didr`` or ``didr:drs=exact:drp_steps=4`` -> (the spec as its label, the MethodConfig):
    ``base`` with the method's name and the given fields."""
    name, *pairs = spec.split(":")
    if name not in METHODS:
        raise ConfigError(f"unknown method {name!r}; choose one of {', '.join(METHODS)}")
    fields = apply_overrides(to_dict(base) | {"name": name}, pairs)
    return spec, from_dict(MethodConfig, fields, "method")


def endpoint_alpha(cfg: MethodConfig, schedule: NoiseSchedule) -> float:
    """``cfg.alpha``, or when unset the weight with DIDR's average push at ``cfg.beta`` (M13)."""
    if cfg.alpha is not None:
        return cfg.alpha
    return equal_push_alpha(schedule, cfg.beta, cfg.omega, cfg.t_min, cfg.t_max)


def build_estimator(cfg: MethodConfig, reward: Callable, mixture=None) -> DRSEstimator:
    drp = lambda: DRPEstimator(reward, cfg.beta, cfg.drp_steps, checkpoint=cfg.drp_checkpoint)  # noqa: E731
    mc = lambda: MonteCarloDRS(reward, cfg.beta, cfg.mc_samples, cfg.mc_sampler_steps)  # noqa: E731
    if cfg.drs == "drp":
        return drp()
    if cfg.drs == "mc":
        return mc()
    if cfg.drs == "hybrid":
        return HybridDRS(drp(), mc(), cfg.t_switch)
    if mixture is None:
        raise ConfigError("method.drs: 'exact' needs a Gaussian-mixture reference (the toy experiment)")
    return ExactMixtureDRS(mixture, reward, cfg.beta)


def build_objective(
    cfg: MethodConfig, schedule: NoiseSchedule, reward: Callable | None, *, mixture=None, initial_generator=None
) -> Objective:
    """The objective named by ``cfg.name``. ``mixture`` enables the exact DRS on toy problems;
    ``initial_generator`` (frozen) is ReFL's regression target, needed when
    ``cfg.needs_initial_generator``. An objective that cannot do what ``cfg`` asks is refused here."""
    if cfg.name in ("dipp", "dmdr", "didr", "refl") and reward is None:
        raise ConfigError(f"method.name: {cfg.name!r} needs a reward")
    if cfg.needs_initial_generator and initial_generator is None:
        raise ConfigError(f"method.refl_reg: {cfg.refl_reg:g} regresses onto the frozen initial generator, which this experiment does not provide")
    common = dict(omega=cfg.omega, normalise=cfg.normalise, t_min=cfg.t_min, t_max=cfg.t_max)
    if cfg.name == "di":
        return DI(schedule, **common)
    if cfg.name == "dmd":
        return DMD(schedule, **{**common, "normalise": True})
    if cfg.name == "dipp":
        return DIPlusPlus(schedule, reward, endpoint_alpha(cfg, schedule), **common)
    if cfg.name == "dmdr":
        return DMDReward(schedule, reward, endpoint_alpha(cfg, schedule), **{**common, "normalise": True})
    if cfg.name == "didr":
        return DIDR(schedule, build_estimator(cfg, reward, mixture), **common)
    return ReFL(reward, cfg.refl_reg, initial_generator)
