"""The alternating TA / generator training loop."""

from didr.train.config import TrainConfig
from didr.train.loop import EMA, Alignment, Trainer

__all__ = ["TrainConfig", "EMA", "Alignment", "Trainer"]
