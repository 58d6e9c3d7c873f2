"""The alternating TA / generator loop, with accelerate, checkpoints, exact resume and guards."""

from didr.train.config import TrainConfig
from didr.train.ema import EMA
from didr.train.loop import Alignment, RewardStop, Trainer, TrainingError
from didr.train.signals import Interrupted

__all__ = ["TrainConfig", "EMA", "Alignment", "Trainer", "Interrupted", "TrainingError", "RewardStop"]
