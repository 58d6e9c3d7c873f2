"""An exponential moving average of a module's weights: the generator's during alignment, and the
reference's or the initial generator's during pre-training."""

from __future__ import annotations

import copy

import torch
from torch import nn


class EMA:
    """The EMA of a module's floating-point parameters and buffers (integer buffers are copied)."""

    def __init__(self, module: nn.Module, decay: float):
        self.decay = decay
        frozen = {id(p): p for p in module.parameters() if not p.requires_grad}  # shared, not copied (a LoRA's base)
        self.module = copy.deepcopy(module, frozen).eval().requires_grad_(False)

    @torch.no_grad()
    def update(self, module: nn.Module, decay: float | None = None) -> None:
        d = self.decay if decay is None else decay
        for ema_p, p in zip(self.module.state_dict().values(), module.state_dict().values()):
            if ema_p.data_ptr() == p.data_ptr():  # a frozen tensor both share
                continue
            if ema_p.dtype.is_floating_point:
                ema_p.lerp_(p.detach(), 1 - d)
            else:
                ema_p.copy_(p)
