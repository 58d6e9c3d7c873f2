"""Noise schedules (M1), samplers and the denoising score-matching loss (M5)."""

from didr.diffusion.losses import dsm_loss
from didr.diffusion.samplers import ancestral_sample, ddim_sample, ddim_step, flow_euler_sample, time_grid
from didr.diffusion.schedules import (
    EDMSchedule,
    FlowMatchingSchedule,
    NoiseSchedule,
    VPCosineSchedule,
    VPDiscreteSchedule,
    make_schedule,
)

__all__ = [
    "EDMSchedule",
    "FlowMatchingSchedule",
    "NoiseSchedule",
    "VPCosineSchedule",
    "VPDiscreteSchedule",
    "make_schedule",
    "ancestral_sample",
    "ddim_sample",
    "ddim_step",
    "flow_euler_sample",
    "time_grid",
    "dsm_loss",
]
