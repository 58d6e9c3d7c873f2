"""The ``train`` section: the alternating TA / generator loop's settings."""

from __future__ import annotations

from dataclasses import dataclass

from didr.config import require


@dataclass
class TrainConfig:
    steps: int = 1000  # generator updates
    batch_size: int = 512  # generator samples per update (per process)
    ta_updates: int = 5  # TA (fake score) DSM updates per generator update
    lr_generator: float = 1e-4
    lr_ta: float = 3e-4
    adam_beta1: float = 0.0  # Diff-Instruct / DMD2 practice: no momentum on the generator
    adam_beta2: float = 0.999
    weight_decay: float = 0.0
    grad_clip: float = 0.0  # max gradient norm, 0 = off
    ema_decay: float = 0.0  # EMA of the generator's weights, 0 = off
    ema_start: int = 0  # steps before the EMA starts tracking
    seed: int = 0
    log_every: int = 50
    progress: bool = True  # progress bar on the terminal

    def validate(self, path: str = "train") -> None:
        for name in ("steps", "batch_size", "log_every"):
            require(getattr(self, name) >= 1, f"{path}.{name}", f"must be >= 1, got {getattr(self, name)}")
        require(self.ta_updates >= 0, f"{path}.ta_updates", f"must be >= 0, got {self.ta_updates}")
        for name in ("lr_generator", "lr_ta"):
            require(getattr(self, name) > 0, f"{path}.{name}", f"must be > 0, got {getattr(self, name)}")
        for name in ("adam_beta1", "adam_beta2", "ema_decay"):
            v = getattr(self, name)
            require(0 <= v < 1, f"{path}.{name}", f"must be in [0, 1), got {v}")
        require(self.grad_clip >= 0, f"{path}.grad_clip", f"must be >= 0, got {self.grad_clip}")
        require(self.ema_start >= 0, f"{path}.ema_start", f"must be >= 0, got {self.ema_start}")
