"""What every diffusers backbone shares: the record that describes a backbone family, and the
calling conventions (autocast, the network's own dtype) of its denoiser adapters."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
from torch import Tensor, nn

from didr.diffusion.denoiser import NetworkDenoiser
from didr.diffusion.schedules import FlowMatchingSchedule, NoiseSchedule

AUTOCAST_DTYPES = {"none": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def autocast(x: Tensor, mode: str):
    """``torch.autocast`` for ``mode`` (none | bf16 | fp16) on x's device; a no-op for none."""
    dtype = AUTOCAST_DTYPES[mode]
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=x.device.type, dtype=dtype)


class DiffusersCall:
    """Mixin for adapters of diffusers networks: autocast, and the net's own dtype at its input.
    An adapter implements ``call_backbone(x_t, t, cond)``: the network's own call and time convention."""

    autocast_mode: str = "none"

    def net_dtype(self) -> torch.dtype:
        return next(self.net.parameters()).dtype

    def call_net(self, x_t: Tensor, t: Tensor, cond: Any) -> Tensor:
        with autocast(x_t, self.autocast_mode):
            return self.call_backbone(x_t.to(self.net_dtype()), t, cond).float()


def flow_schedule(scheduler, time_scale: float = 1.0) -> FlowMatchingSchedule:
    """Flow matching (M1) with the scheduler's shift; ``time_scale`` is the network's timestep scale."""
    shift = float(getattr(scheduler.config, "shift", 1.0) or 1.0)
    return FlowMatchingSchedule(shift=shift, time_scale=time_scale)


@dataclass(frozen=True)
class Family:
    """A family of networks that share a denoiser adapter: ``denoiser(net, schedule, prediction_type)``
    and the (M1) schedule of their diffusers scheduler."""

    name: str
    denoiser: Callable[[nn.Module, NoiseSchedule, str], NetworkDenoiser]
    schedule: Callable[[Any], NoiseSchedule]


@dataclass(frozen=True)
class Backbone:
    """A text-to-image pipeline that didr trains: its network family and folder, its stock pipeline
    class, the reference's default guidance, and the pieces of the pipeline that differ by family.

    ``text_encoder(load, cfg, device, dtype)`` builds the encoder from ``load(cls, subfolder)``;
    ``shared_cond(cfg)`` are conditioning fields every prompt shares (SDXL's ``time_ids``);
    ``check(cfg, name, net_config, row)`` refuses a network that does not fit the text encoder;
    ``latent_multiple`` is the latent side's divisor beyond the VAE's (a transformer's patch);
    ``sampling(times, schedule)`` is the stock pipeline's call for the generator's times.
    """

    kind: str
    family: Family
    network: str  # the pipeline folder's network subfolder, and its name in LoRA files
    network_class: str  # the diffusers class of the network
    pipeline_class: str  # the stock diffusers pipeline
    cfg_scale: float  # the reference's default CFG weight w of (M4)
    text_encoder: Callable
    sampling: Callable[[list[float], NoiseSchedule], dict]
    check: Callable = field(default=lambda cfg, name, net_config, row: None)
    shared_cond: Callable = field(default=lambda cfg: {})
    zero_null_prompt: bool = False  # the empty prompt's embedding is zeros (SDXL's force_zeros_for_empty_prompt)
    latent_multiple: int = 1

    def network_cls(self):
        import diffusers

        return getattr(diffusers, self.network_class)

    def pipeline_cls(self):
        import diffusers

        return getattr(diffusers, self.pipeline_class)


def flow_sampling(times: list[float], schedule: NoiseSchedule) -> dict:
    """Flow pipelines take the unshifted sigmas and apply their scheduler's shift to them."""
    return {"sigmas": [float(schedule.unshift_time(t)) for t in times]}
