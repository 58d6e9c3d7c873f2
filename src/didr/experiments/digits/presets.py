"""The presets that define ``didr bench digits|mnist``, as overrides of a run config's sections (the
``digits`` section itself is :class:`didr.experiments.config.DigitsConfig`). ``configs/digits.yaml``
and ``configs/mnist.yaml`` hold the same settings for ``didr train``.
"""

from __future__ import annotations

import copy

from didr import config as cfgio

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
