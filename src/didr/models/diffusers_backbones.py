"""Adapters that bring diffusers' text-to-image backbones under the one Denoiser interface (M2).

Each adapter overrides ``call_net`` (the backbone's call signature and time convention) and
inherits ``to_x0`` from the parameterisation it predicts:

- :class:`UNetEpsDenoiser` / :class:`UNetVDenoiser` (``UNet2DConditionModel``, SD1.5 / SDXL): eps- or v-prediction on the
  discrete DDPM schedule; SDXL's ``text_time`` added conditions ride in the conditioning dict.
- :class:`ZImageDenoiser` (``ZImageTransformer2DModel``): list-based forward; it is fed
  1 - t (``pipeline_z_image.py`` feeds (1000 - timestep) / 1000) and predicts x_0 - eps, the
  negated flow velocity, so ``FlowDenoiser(sign=-1)``.
- :class:`SD3Denoiser` (``SD3Transformer2DModel``): fed 1000 t, predicts eps - x_0.
- :class:`FluxDenoiser` (``FluxTransformer2DModel``): fed t, predicts eps - x_0 on 2x2-packed tokens.

Conditioning is a dict of batched fields (see :mod:`didr.models.text`); the ``prompts`` entry is
for rewards and ignored here. Latents are the backbone's own (scaled) latents; images appear only
in :class:`LatentReward`, through a differentiable VAE decode.
"""

from __future__ import annotations

import contextlib
from typing import Any, Callable

import torch
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint as grad_checkpoint

from didr.diffusion.schedules import FlowMatchingSchedule, NoiseSchedule, VPDiscreteSchedule
from didr.errors import ConfigError
from didr.models.denoiser import EpsDenoiser, FlowDenoiser, NetworkDenoiser, VDenoiser, X0Denoiser

AUTOCAST_DTYPES = {"none": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def autocast(x: Tensor, mode: str):
    """``torch.autocast`` for ``mode`` (none | bf16 | fp16) on x's device; a no-op for none."""
    dtype = AUTOCAST_DTYPES[mode]
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=x.device.type, dtype=dtype)


class DiffusersCall:
    """Mixin for adapters of diffusers networks: autocast, and the net's own dtype at its input."""

    autocast_mode: str = "none"

    def net_dtype(self) -> torch.dtype:
        return next(self.net.parameters()).dtype

    def call_net(self, x_t: Tensor, t: Tensor, cond: Any) -> Tensor:
        with autocast(x_t, self.autocast_mode):
            return self.call_backbone(x_t.to(self.net_dtype()), t, cond).float()


class UNetCall(DiffusersCall):
    """``UNet2DConditionModel(x, timestep, encoder_hidden_states, added_cond_kwargs)``."""

    def call_backbone(self, x_t, t, cond):
        added = {k: cond[k].to(x_t.dtype) for k in ("text_embeds", "time_ids") if k in cond}
        return self.net(
            x_t,
            self.schedule.model_time(t),
            encoder_hidden_states=cond["encoder_hidden_states"].to(x_t.dtype),
            added_cond_kwargs=added or None,
            return_dict=False,
        )[0]


class UNetEpsDenoiser(UNetCall, EpsDenoiser):
    pass


class UNetVDenoiser(UNetCall, VDenoiser):
    pass


class UNetX0Denoiser(UNetCall, X0Denoiser):
    pass


UNET_DENOISERS = {"epsilon": UNetEpsDenoiser, "v_prediction": UNetVDenoiser, "sample": UNetX0Denoiser}


class ZImageDenoiser(DiffusersCall, FlowDenoiser):
    """Z-Image's transformer: lists of (C, 1, H, W) latents and (L_i, D) caption features."""

    def __init__(self, net: nn.Module, schedule: NoiseSchedule):
        super().__init__(net, schedule, sign=-1.0)

    def call_backbone(self, x_t, t, cond):
        frames = list(x_t.unsqueeze(2).unbind(0))
        caps = [c.to(x_t.dtype) for c in cond["cap_feats"]]
        out = self.net(frames, 1.0 - t.to(x_t.dtype), caps, return_dict=False)[0]
        return torch.stack(out).squeeze(2)


class SD3Denoiser(DiffusersCall, FlowDenoiser):
    """SD3's MMDiT: fed the scheduler's timestep 1000 t (``time_scale``), predicts eps - x_0."""

    def call_backbone(self, x_t, t, cond):
        return self.net(
            hidden_states=x_t,
            timestep=self.schedule.model_time(t).to(x_t.dtype),
            encoder_hidden_states=cond["encoder_hidden_states"].to(x_t.dtype),
            pooled_projections=cond["pooled_projections"].to(x_t.dtype),
            return_dict=False,
        )[0]


class FluxDenoiser(DiffusersCall, FlowDenoiser):
    """Flux: latents packed into 2x2 tokens with position ids; fed t (the pipeline's timestep / 1000)."""

    guidance: float | None = None  # Flux-dev's distilled guidance input; None for Flux-schnell

    def call_backbone(self, x_t, t, cond):
        b, c, h, w = x_t.shape
        tokens = x_t.reshape(b, c, h // 2, 2, w // 2, 2).permute(0, 2, 4, 1, 3, 5).reshape(b, h * w // 4, c * 4)
        ids = torch.zeros(h // 2, w // 2, 3, device=x_t.device)
        ids[..., 1] += torch.arange(h // 2, device=x_t.device)[:, None]
        ids[..., 2] += torch.arange(w // 2, device=x_t.device)[None, :]
        text = cond["encoder_hidden_states"].to(x_t.dtype)
        guidance = None if self.guidance is None else torch.full((b,), self.guidance, device=x_t.device)
        out = self.net(
            hidden_states=tokens,
            timestep=t.to(x_t.dtype),
            guidance=guidance,
            pooled_projections=cond["pooled_projections"].to(x_t.dtype),
            encoder_hidden_states=text,
            txt_ids=torch.zeros(text.shape[1], 3, device=x_t.device),
            img_ids=ids.reshape(-1, 3),
            return_dict=False,
        )[0]
        return out.reshape(b, h // 2, w // 2, c, 2, 2).permute(0, 3, 1, 4, 2, 5).reshape(b, c, h, w)


def schedule_from_scheduler(scheduler, kind: str) -> NoiseSchedule:
    """The (M1) schedule of a diffusers scheduler: the discrete DDPM schedule for UNets, flow
    matching with the scheduler's shift for the transformers (``time_scale`` 1000 for SD3)."""
    if kind == "unet":
        return VPDiscreteSchedule.from_diffusers(scheduler)
    shift = float(getattr(scheduler.config, "shift", 1.0) or 1.0)
    return FlowMatchingSchedule(shift=shift, time_scale=1000.0 if kind == "sd3" else 1.0)


def make_denoiser(net: nn.Module, schedule: NoiseSchedule, kind: str, prediction_type: str = "epsilon", autocast_mode: str = "none") -> NetworkDenoiser:
    """The adapter for ``kind`` (unet | zimage | sd3 | flux) around a diffusers network."""
    if kind == "unet":
        if prediction_type not in UNET_DENOISERS:
            raise ConfigError(f"UNet prediction_type must be one of {', '.join(UNET_DENOISERS)}, got {prediction_type!r}")
        den = UNET_DENOISERS[prediction_type](net, schedule)
    elif kind == "zimage":
        den = ZImageDenoiser(net, schedule)
    elif kind in ("sd3", "flux"):
        den = (SD3Denoiser if kind == "sd3" else FluxDenoiser)(net, schedule)
    else:
        raise ConfigError(f"unknown backbone network kind {kind!r}; choose unet, zimage, sd3 or flux")
    den.autocast_mode = autocast_mode
    return den


class SharedDenoiser(nn.Module):
    """A Denoiser that calls another's network without owning it as a submodule.

    The frozen reference and the LoRA TA share one base network; registering it twice would let
    ``reference.requires_grad_(False)`` freeze the TA's adapter too. With ``adapters_off`` the
    call runs with every peft adapter of the network switched off: the plain reference.

    Switching adapters is module state, and a checkpointed block recomputed later in the backward
    pass would see the state of that later moment. So inside an adapters-off call the network's
    own checkpointing is off, and the whole call is checkpointed here instead: its recomputation
    re-enters the same switches.
    """

    def __init__(self, base: NetworkDenoiser, adapters_off: bool = True):
        super().__init__()
        self._base = (base,)  # a tuple hides it from nn.Module's registry
        self.adapters_off = adapters_off

    @property
    def schedule(self) -> NoiseSchedule:
        return self._base[0].schedule

    def _plain(self, x_t: Tensor, t: Tensor, cond: Any) -> Tensor:
        base = self._base[0]
        with adapters_disabled(base.net), own_checkpointing_off(base.net):
            return base(x_t, t, cond)

    def forward(self, x_t: Tensor, t: Tensor, cond: Any = None) -> Tensor:
        base = self._base[0]
        if not self.adapters_off:
            return base(x_t, t, cond)
        if torch.is_grad_enabled() and getattr(base.net, "is_gradient_checkpointing", False):
            return grad_checkpoint(self._plain, x_t, t, cond, use_reentrant=False)
        return self._plain(x_t, t, cond)

    def score(self, x_t, t, cond=None):
        from didr.models.denoiser import score_from_x0

        return score_from_x0(self(x_t, t, cond), x_t, t, self.schedule)


@contextlib.contextmanager
def adapters_disabled(net: nn.Module):
    """Switch off every peft LoRA layer of ``net`` for the duration, leaving ``requires_grad`` alone
    (peft's own ``disable_adapters`` also freezes the adapter weights, which would stop the TA's training)."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    layers = [m for m in net.modules() if isinstance(m, BaseTunerLayer)]
    saved = [m._disable_adapters for m in layers]
    for m in layers:
        m._disable_adapters = True
    try:
        yield
    finally:
        for m, s in zip(layers, saved):
            m._disable_adapters = s


@contextlib.contextmanager
def own_checkpointing_off(net: nn.Module):
    """Switch off diffusers' per-block gradient checkpointing of ``net`` for the duration."""
    flagged = [m for m in net.modules() if getattr(m, "gradient_checkpointing", False) is True]
    for m in flagged:
        m.gradient_checkpointing = False
    try:
        yield
    finally:
        for m in flagged:
            m.gradient_checkpointing = True


class VaeDecoder(nn.Module):
    """Differentiable latent -> image decode, images in [-1, 1].

    ``latents / scaling_factor + shift_factor`` undoes the pipelines' latent normalisation. Memory
    bounds: ``micro_batch`` decodes that many latents at a time; ``checkpoint`` recomputes the
    decoder's activations in the backward pass, block by block where the VAE supports diffusers'
    gradient checkpointing (the peak is then one block's, not the whole decode's), else per micro-batch;
    ``downscale`` > 1 decodes latents bilinearly shrunk by that factor (smaller images, for
    rewards that resize to 224 px anyway).
    """

    def __init__(self, vae: nn.Module, micro_batch: int = 0, checkpoint: bool = False, downscale: float = 1.0):
        super().__init__()
        self.vae, self.micro_batch, self.checkpoint, self.downscale = vae, micro_batch, checkpoint, downscale
        self.per_block = checkpoint and getattr(vae, "_supports_gradient_checkpointing", False)
        if self.per_block:
            vae.enable_gradient_checkpointing()
        self.scaling = float(vae.config.scaling_factor)
        self.shift = float(getattr(vae.config, "shift_factor", None) or 0.0)

    def _decode(self, z: Tensor) -> Tensor:
        dtype = next(self.vae.parameters()).dtype
        return self.vae.decode((z / self.scaling + self.shift).to(dtype), return_dict=False)[0].float()

    def forward(self, latents: Tensor) -> Tensor:
        if self.downscale > 1:
            size = [max(1, round(s / self.downscale)) for s in latents.shape[-2:]]
            latents = nn.functional.interpolate(latents, size=size, mode="bilinear", align_corners=False)
        step = self.micro_batch or latents.shape[0]
        out = []
        for chunk in latents.split(step):
            if self.checkpoint and not self.per_block and torch.is_grad_enabled():
                out.append(grad_checkpoint(self._decode, chunk, use_reentrant=False))
            else:
                out.append(self._decode(chunk))
        return torch.cat(out).clamp(-1, 1)


class LatentReward(nn.Module):
    """reward(vae_decode(latents), prompts): the one place where images appear.

    The conditioning dict's ``prompts`` are handed to the image reward; the objectives and the DRP
    estimator (M12) differentiate through the decode to the latents.
    """

    def __init__(self, reward: Callable, decoder: VaeDecoder):
        super().__init__()
        self.reward, self.decoder = reward, decoder
        self.name = getattr(reward, "name", "reward")
        self.differentiable = bool(getattr(reward, "differentiable", True))

    def forward(self, latents: Tensor, cond: Any = None) -> Tensor:
        prompts = cond.get("prompts") if isinstance(cond, dict) else cond
        return self.reward(self.decoder(latents), prompts)
