"""The loop's optimisers and learning-rate schedules."""

from __future__ import annotations

import math

import torch

from didr.train.config import TrainConfig


def make_optimizer(params, lr: float, cfg: TrainConfig) -> torch.optim.Optimizer:
    # foreach: the same update as the per-tensor loop (bit for bit), in half the time for small nets on a CPU
    return torch.optim.AdamW(
        [p for p in params if p.requires_grad], lr=lr, betas=(cfg.adam_beta1, cfg.adam_beta2), weight_decay=cfg.weight_decay, foreach=True
    )


def lr_factor(step: int, cfg: TrainConfig) -> float:
    """Linear warmup over ``lr_warmup`` steps, then constant or a cosine decay to 0 at ``steps``."""
    if step < cfg.lr_warmup:
        return (step + 1) / cfg.lr_warmup
    if cfg.lr_schedule == "cosine":
        progress = min(1.0, (step - cfg.lr_warmup) / max(1, cfg.steps - cfg.lr_warmup))
        return 0.5 * (1 + math.cos(math.pi * progress))
    return 1.0


def make_lr_schedule(opt: torch.optim.Optimizer, cfg: TrainConfig) -> torch.optim.lr_scheduler.LambdaLR:
    return torch.optim.lr_scheduler.LambdaLR(opt, lambda step: lr_factor(step, cfg))
