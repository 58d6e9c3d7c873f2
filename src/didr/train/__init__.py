"""The alternating TA / generator loop, with accelerate, checkpoints, exact resume and guards."""

from didr.train.config import TrainConfig
from didr.train.loop import EMA, Alignment, Interrupted, RewardStop, Trainer, TrainingError

__all__ = ["TrainConfig", "EMA", "Alignment", "Trainer", "Interrupted", "TrainingError", "RewardStop"]
