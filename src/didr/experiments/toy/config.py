"""The ``toy`` section of a run's config, and the toy's presets.

    toy:
      means: [-2.0, 2.0]     # K numbers (1-D), or K lists of d numbers
      stds: [0.5, 0.5]
      weights: [0.5, 0.5]
      reward: sigmoid:4
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field

from didr.config import require
from didr.diffusion.mixture import GaussianMixture
from didr.errors import ConfigError
from didr.rewards.toy import parse_toy_reward


@dataclass
class ToyConfig:
    """The ``toy`` section: the data mixture q_0, the reward, and the preparation stages."""

    means: list[float] | list[list[float]] = field(default_factory=lambda: [-2.0, 2.0])  # K numbers (1-D) or K lists of d
    stds: list[float] = field(default_factory=lambda: [0.5, 0.5])  # one isotropic std per mode
    weights: list[float] = field(default_factory=lambda: [0.5, 0.5])
    ring: int = 0  # > 0: a 2-D ring of this many equal modes instead of the 1-D mixture
    ring_radius: float = 3.0
    ring_std: float = 0.3
    reward: str = "sigmoid:4"  # sigmoid:K[:w1,...,wd] | linear:C | linear:w1,...,wd | step (no gradient: Monte-Carlo DRS only)
    schedule: str = "vp-cosine"  # vp-cosine | flow | ve
    reference: str = "trained"  # trained | exact
    hidden: int = 128
    depth: int = 3
    ref_steps: int = 10000
    ref_batch: int = 2048
    ref_lr: float = 3e-4
    teacher_steps: int = 30
    distill_steps: int = 3000
    distill_batch: int = 2048
    distill_lr: float = 1e-3
    eval_samples: int = 10000

    def validate(self, path: str = "toy") -> None:
        require(self.reference in ("trained", "exact"), f"{path}.reference", f"must be 'trained' or 'exact', got {self.reference!r}")
        require(self.schedule in ("vp-cosine", "flow", "ve"), f"{path}.schedule", f"must be vp-cosine, flow or ve, got {self.schedule!r}")
        require(self.ring >= 0, f"{path}.ring", f"must be >= 0, got {self.ring}")
        for name in ("ref_steps", "ref_batch", "teacher_steps", "distill_batch", "eval_samples", "hidden", "depth"):
            require(getattr(self, name) >= 1, f"{path}.{name}", f"must be >= 1, got {getattr(self, name)}")
        require(self.distill_steps >= 0, f"{path}.distill_steps", f"must be >= 0, got {self.distill_steps}")
        mixture = self.mixture()  # raises a ConfigError for bad shapes, stds or weights
        try:
            parse_toy_reward(self.reward).direction(mixture.dim)
        except ConfigError as err:
            raise ConfigError(f"{path}.reward: {err}") from None

    def mixture(self) -> GaussianMixture:
        if self.ring:
            return GaussianMixture.ring(self.ring, self.ring_radius, self.ring_std)
        return GaussianMixture(self.means, self.stds, self.weights)


#: DRP's first-order bias grows with the noise level (benchmarks/results/drs_error.md); on the toy,
#: generator noise levels t <= 0.4 with k = 4 DRP steps remove it. Restricting omega(t) to a range
#: keeps (M10)'s minimiser p*: matching the noised marginals at any one t > 0 matches them at t = 0.
#: Every score-distillation method gets the same range, so they still differ only in the target.
TOY_METHOD = {"drs": "drp", "drp_steps": 4, "t_max": 0.4}

#: presets, as overrides of the RunConfig's sections
PRESETS: dict[str, dict] = {
    # the paper's appendix schedule (docs/method.md §5)
    "paper": {
        "toy": {"ref_steps": 10000, "ref_batch": 2048, "ref_lr": 3e-4, "distill_steps": 3000, "distill_batch": 2048, "distill_lr": 1e-3},
        "train": {"steps": 6000, "batch_size": 2048, "ta_updates": 5, "lr_generator": 1e-4, "lr_ta": 3e-4},
        "method": TOY_METHOD,
    },
    # all methods in a few minutes on 2 CPU cores: fewer, larger steps. The distillation is long
    # enough (and its learning rate high enough) for the generator to draw modes of std 0.05, and
    # the generator's EMA removes the jitter that a constant learning rate leaves on such modes
    # (without it, DI alone spreads them to a median of 5 stds; benchmarks/results/toy_frontiers.md).
    "fast": {
        "toy": {"ref_steps": 2000, "ref_batch": 1024, "ref_lr": 1e-3, "distill_steps": 2000, "distill_batch": 1024, "distill_lr": 3e-3},
        "train": {"steps": 600, "batch_size": 512, "ta_updates": 5, "lr_generator": 1e-3, "lr_ta": 1e-3, "ema_decay": 0.99},
        "method": TOY_METHOD,
    },
    # a smoke test of the whole pipeline, frontiers included, in a few minutes: not for conclusions
    "smoke": {
        "toy": {"ref_steps": 600, "ref_batch": 512, "ref_lr": 1e-3, "distill_steps": 600, "distill_batch": 512, "distill_lr": 3e-3,
                "eval_samples": 4000},
        "train": {"steps": 150, "batch_size": 256, "ta_updates": 5, "lr_generator": 1e-3, "lr_ta": 1e-3, "ema_decay": 0.95},
        "method": TOY_METHOD,
    },
}


def apply_preset(data: dict, preset: str) -> dict:
    """``data`` (a RunConfig mapping) with the preset's values wherever ``data`` leaves them unset."""
    if preset not in PRESETS:
        raise ConfigError(f"unknown preset {preset!r}; choose one of {', '.join(PRESETS)}")
    out = copy.deepcopy(data)
    for section, values in PRESETS[preset].items():
        out.setdefault(section, {})
        for k, v in values.items():
            out[section].setdefault(k, v)
    return out
