"""The toy's presets (``didr toy --preset fast|smoke|paper``), as overrides of a run config's
sections; the ``toy`` section itself is :class:`didr.experiments.config.ToyConfig`."""

from __future__ import annotations

import copy

from didr.errors import ConfigError

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
