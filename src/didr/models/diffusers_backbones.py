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
import copy
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
    """One role of a network that several roles share: the plain base (``adapter=None``: the frozen
    reference) or one named peft adapter on it (``"ta"``: the LoRA TA; ``"generator"``: a LoRA
    generator over the reference, DI-style or like DMD2's released LoRA). The base weights are held once.

    The network is not a submodule (a tuple hides it): a role's parameters, ``state_dict`` and
    ``requires_grad_`` are its own adapter's weights alone, registered in ``weights``. So the TA's
    optimiser, checkpoint and DDP wrapper never see the generator's adapter or the frozen base, and
    ``reference.requires_grad_(False)`` freezes nothing.

    Each call runs with the role's adapter switched on and the others off (:func:`active_adapter`).
    That is module state, and a block checkpointed in one role's call is recomputed during a later
    backward pass, when another role may be active: enable the network's checkpointing with
    :func:`enable_checkpointing`, whose recomputation re-enters the adapter state of its forward call.
    """

    def __init__(self, base: NetworkDenoiser, adapter: str | None = None):
        super().__init__()
        self._base = (base,)  # a tuple hides it from nn.Module's registry
        self.adapter = adapter
        own = adapter_parameters(base.net, adapter) if adapter is not None else {}
        if adapter is not None and not own:
            raise ConfigError(f"the network has no adapter named {adapter!r}")
        self.weights = nn.ParameterDict({name.replace(".", "/"): p for name, p in own.items()})

    @property
    def base(self) -> NetworkDenoiser:
        return self._base[0]

    @property
    def net(self) -> nn.Module:
        return self._base[0].net

    @property
    def schedule(self) -> NoiseSchedule:
        return self._base[0].schedule

    def __getattr__(self, name: str):
        try:
            return super().__getattr__(name)
        except AttributeError:
            if name.startswith("_"):
                raise
            return getattr(self._base[0], name)  # e.g. the base's own dsm_weight

    def forward(self, x_t: Tensor, t: Tensor, cond: Any = None) -> Tensor:
        require_role_safe_checkpointing(self.net)
        with active_adapter(self.net, self.adapter):
            return self._base[0](x_t, t, cond)

    def score(self, x_t, t, cond=None):
        from didr.models.denoiser import score_from_x0

        return score_from_x0(self(x_t, t, cond), x_t, t, self.schedule)

    def __deepcopy__(self, memo):
        """A copy (an EMA of a role, say) shares the frozen base weights and copies the adapters."""
        for p in self.net.parameters():
            if not p.requires_grad:
                memo.setdefault(id(p), p)
        new = self.__class__.__new__(self.__class__)
        memo[id(self)] = new
        new.__dict__.update(copy.deepcopy(self.__dict__, memo))
        return new


def adapter_parameters(net: nn.Module, adapter: str) -> dict[str, nn.Parameter]:
    """The LoRA weights of the peft adapter ``adapter`` in ``net``, by parameter name."""
    return {n: p for n, p in net.named_parameters() if "lora_" in n and f".{adapter}." in n}


def lora_layers(module: nn.Module) -> list[nn.Module]:
    from peft.tuners.tuners_utils import BaseTunerLayer

    return [m for m in module.modules() if isinstance(m, BaseTunerLayer)]


def _adapter_state(layers: list[nn.Module]) -> list[tuple[bool, Any]]:
    return [(m._disable_adapters, m._active_adapter) for m in layers]


def _set_adapter_state(layers: list[nn.Module], state: list[tuple[bool, Any]]) -> None:
    for m, (off, active) in zip(layers, state):
        m._disable_adapters, m._active_adapter = off, active


@contextlib.contextmanager
def active_adapter(net: nn.Module, name: str | None):
    """For the duration, every peft LoRA layer of ``net`` runs adapter ``name`` alone, or none
    (``None``: the plain base network). ``requires_grad`` is left alone: peft's own
    ``set_adapter`` / ``disable_adapters`` also freeze the other adapters, which would stop their training."""
    layers = lora_layers(net)
    saved = _adapter_state(layers)
    _set_adapter_state(layers, [(name is None, [name] if name is not None else active) for _, active in saved])
    try:
        yield
    finally:
        _set_adapter_state(layers, saved)


@contextlib.contextmanager
def adapters_disabled(module: nn.Module):
    """For the duration, ``module`` runs its frozen base: every peft LoRA layer in it is off, and
    every role in it (:class:`SharedDenoiser`, whose network is not a submodule) runs the plain
    base. ``requires_grad`` is left alone."""
    roles = [m for m in module.modules() if isinstance(m, SharedDenoiser)]
    adapters = [r.adapter for r in roles]
    layers = lora_layers(module)
    saved = _adapter_state(layers)
    _set_adapter_state(layers, [(True, active) for _, active in saved])
    for r in roles:
        r.adapter = None
    try:
        yield
    finally:
        for r, a in zip(roles, adapters):
            r.adapter = a
        _set_adapter_state(layers, saved)


def role_checkpoint(module: nn.Module, *args):
    """diffusers' per-block checkpoint function, safe under adapter switching: the recomputation in
    the backward pass runs with the adapter state that the forward call had."""
    layers = lora_layers(module)
    state = _adapter_state(layers)

    def run(*inputs):
        now = _adapter_state(layers)
        _set_adapter_state(layers, state)
        try:
            return module(*inputs)
        finally:
            _set_adapter_state(layers, now)

    return grad_checkpoint(run, *args, use_reentrant=False)


def enable_checkpointing(net: nn.Module) -> nn.Module:
    """diffusers' block-by-block gradient checkpointing, recomputing each block under the adapter
    state of its forward call (:func:`role_checkpoint`)."""
    net.enable_gradient_checkpointing(role_checkpoint)
    return net


def require_role_safe_checkpointing(net: nn.Module) -> None:
    """Refuse a shared network whose blocks are checkpointed by a function that ignores adapter state."""
    for m in net.modules():
        if getattr(m, "gradient_checkpointing", False) is True:
            func = getattr(m, "_gradient_checkpointing_func", None)
            if func is not None and func is not role_checkpoint:
                raise ConfigError("a network shared between roles must enable checkpointing with "
                                  "didr.models.diffusers_backbones.enable_checkpointing, not enable_gradient_checkpointing()")
            return


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
