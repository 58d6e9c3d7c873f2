"""The ``train`` section: the alternating TA / generator loop's settings."""

from __future__ import annotations

from dataclasses import dataclass, field

from didr.config import require
from didr.diffusion.losses import TA_WEIGHTINGS

MIXED_PRECISION = ("no", "bf16", "fp16")
LR_SCHEDULES = ("constant", "cosine")
ALARM_MODES = ("off", "warn", "stop")
TRACKERS = ("tensorboard", "wandb")

#: fields that may change when a run is resumed; any other change makes the checkpoint incompatible.
#: grad_accum splits the global batch with the number of processes: a run resumed on half as many
#: processes keeps its global batch, and its random streams, with twice the grad_accum (didr.train.streams)
RESUMABLE_CHANGES = ("steps", "log_every", "progress", "checkpoint_every", "keep_checkpoints", "max_bad_steps", "resume", "grad_accum",
                     "eval_every", "alarm", "trackers")


@dataclass
class TrainConfig:
    steps: int = 1000  # generator updates
    batch_size: int = 512  # generator samples per micro-batch (per process)
    grad_accum: int = 1  # micro-batches per update: the effective batch is batch_size * grad_accum * processes
    ta_updates: int = 5  # TA (fake score) DSM updates per generator update
    ta_weighting: str = "native"  # TA's DSM loss: native (its backbone's own: eps-, v- or flow-velocity MSE; EDM's for built-in nets) | x0
    lr_generator: float = 1e-4
    lr_ta: float = 3e-4
    lr_warmup: int = 0  # steps of linear learning-rate warmup (both optimisers)
    lr_schedule: str = "constant"  # constant | cosine (decay to 0 at `steps`, after the warmup)
    adam_beta1: float = 0.0  # Diff-Instruct / DMD2 practice: no momentum on the generator
    adam_beta2: float = 0.999
    weight_decay: float = 0.0
    grad_clip: float = 0.0  # max gradient norm, 0 = off
    mixed_precision: str = "no"  # no | bf16 | fp16 (autocast through accelerate)
    ema_decay: float = 0.0  # EMA of the generator's weights, 0 = off
    ema_start: int = 0  # steps before the EMA starts tracking
    seed: int = 0  # each process seeds with seed + its rank
    log_every: int = 50
    checkpoint_every: int = 0  # steps between checkpoints under OUT/checkpoints/, 0 = only at the end
    keep_checkpoints: int = 3  # the last N checkpoints are kept
    max_bad_steps: int = 10  # stop after this many skipped (NaN / inf) steps in a row
    resume: bool = False  # continue from the latest good checkpoint under OUT/checkpoints/
    progress: bool = True  # progress on stderr: a bar on a terminal, else a plain line every 10% or 60 s
    eval_every: int = 0  # steps between the experiment's held-out evaluations (and one before the first step); 0 = none
    alarm: str = "warn"  # what a reward-hacking alarm at an evaluation does: off | warn | stop (and export the best evaluation's generator)
    trackers: list[str] = field(default_factory=lambda: ["tensorboard"])  # scalars and images: tensorboard, wandb (when installed)

    def validate(self, path: str = "train") -> None:
        for name in ("steps", "batch_size", "grad_accum", "log_every", "keep_checkpoints", "max_bad_steps"):
            require(getattr(self, name) >= 1, f"{path}.{name}", f"must be >= 1, got {getattr(self, name)}")
        for name in ("ta_updates", "ema_start", "lr_warmup", "checkpoint_every"):
            require(getattr(self, name) >= 0, f"{path}.{name}", f"must be >= 0, got {getattr(self, name)}")
        for name in ("lr_generator", "lr_ta"):
            require(getattr(self, name) > 0, f"{path}.{name}", f"must be > 0, got {getattr(self, name)}")
        for name in ("adam_beta1", "adam_beta2", "ema_decay"):
            v = getattr(self, name)
            require(0 <= v < 1, f"{path}.{name}", f"must be in [0, 1), got {v}")
        require(self.grad_clip >= 0, f"{path}.grad_clip", f"must be >= 0, got {self.grad_clip}")
        require(self.weight_decay >= 0, f"{path}.weight_decay", f"must be >= 0, got {self.weight_decay}")
        require(self.mixed_precision in MIXED_PRECISION, f"{path}.mixed_precision", f"must be one of {', '.join(MIXED_PRECISION)}, got {self.mixed_precision!r}")
        require(self.ta_weighting in TA_WEIGHTINGS, f"{path}.ta_weighting", f"must be one of {', '.join(TA_WEIGHTINGS)}, got {self.ta_weighting!r}")
        require(self.eval_every >= 0, f"{path}.eval_every", f"must be >= 0, got {self.eval_every}")
        require(self.alarm in ALARM_MODES, f"{path}.alarm", f"must be one of {', '.join(ALARM_MODES)}, got {self.alarm!r}")
        unknown = [t for t in self.trackers if t not in TRACKERS]
        require(not unknown, f"{path}.trackers", f"{', '.join(unknown)}: not one of {', '.join(TRACKERS)}")
        require(self.lr_schedule in LR_SCHEDULES, f"{path}.lr_schedule", f"must be one of {', '.join(LR_SCHEDULES)}, got {self.lr_schedule!r}")
