"""The linear MLP head shared by the LAION aesthetic predictor and ImageReward.

Both official heads are the same ``nn.Sequential`` (improved-aesthetic-predictor's ``MLP``, copied
into ImageReward's ``ImageReward.py``): five linear layers with dropout between the first four and
no activation (the ReLUs are commented out in both sources), so their checkpoints' keys are
``layers.{0,2,4,6,7}.{weight,bias}`` and load into :class:`MLPHead` unchanged.
"""

from __future__ import annotations

from torch import Tensor, nn


class MLPHead(nn.Module):
    """input_size -> 1024 -> 128 -> 64 -> 16 -> 1, linear, dropout after the first three layers."""

    def __init__(self, input_size: int = 768):
        super().__init__()
        self.input_size = input_size
        self.layers = nn.Sequential(
            nn.Linear(input_size, 1024),
            nn.Dropout(0.2),
            nn.Linear(1024, 128),
            nn.Dropout(0.2),
            nn.Linear(128, 64),
            nn.Dropout(0.1),
            nn.Linear(64, 16),
            nn.Linear(16, 1),
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.layers(x)
