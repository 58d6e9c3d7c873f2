"""What every diffusers backbone shares: the records that describe a family of networks and a
text-to-image pipeline, and the calling conventions (autocast, the network's own dtype) of their
denoiser adapters.

A :class:`Family` is a kind of network with its denoiser adapter and the (M1) schedule of its
diffusers scheduler; a :class:`Backbone` is a stock pipeline built on one: its folder layout,
text conditioning, latents and VAE, guidance convention, and how its own pipeline is called to
sample a generator. Everything a backbone differs in is a field here, so that loading, training,
export and sampling have one code path.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
from torch import Tensor, nn

from didr.diffusion.denoiser import NetworkDenoiser
from didr.diffusion.schedules import FlowMatchingSchedule, NoiseSchedule
from didr.errors import ConfigError
from didr.models.decode import scaled_decode

AUTOCAST_DTYPES = {"none": None, "bf16": torch.bfloat16, "fp16": torch.float16}
RENOISE_SCHEDULERS = {"unet": {"fresh": "LCMScheduler", "ddim": "EulerDiscreteScheduler"},
                      "flow": {"fresh": "FlowMatchLCMScheduler", "ddim": "FlowMatchEulerDiscreteScheduler"}}


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


def calculate_shift(tokens: int, base_seq: int = 256, max_seq: int = 4096, base_shift: float = 0.5, max_shift: float = 1.15) -> float:
    """The flow pipelines' resolution-dependent mu: linear in the image's token count."""
    m = (max_shift - base_shift) / (max_seq - base_seq)
    return tokens * m + base_shift - m * base_seq


def flow_schedule(scheduler, tokens: int = 4096, steps: int = 50, time_scale: float = 1.0, mu: Callable[[int, int], float] | None = None) -> FlowMatchingSchedule:
    """Flow matching (M1) with the scheduler's time shift: its fixed ``shift``, or, where it shifts
    by resolution (``use_dynamic_shifting``), exp(mu) at this image's ``tokens`` (``mu(tokens,
    steps)`` where the pipeline's mu also depends on the step count). The exponential shift
    exp(mu) t / (exp(mu) t + 1 - t) is the schedule's shift with shift = exp(mu)."""
    config = scheduler.config
    if not config.get("use_dynamic_shifting", False):
        return FlowMatchingSchedule(shift=float(config.get("shift", 1.0) or 1.0), time_scale=time_scale)
    if mu is None:
        value = calculate_shift(tokens, config.get("base_image_seq_len", 256), config.get("max_image_seq_len", 4096),
                                config.get("base_shift", 0.5), config.get("max_shift", 1.15))
    else:
        value = mu(tokens, steps)
    return FlowMatchingSchedule(shift=math.exp(value), time_scale=time_scale)


@dataclass(frozen=True)
class Family:
    """A family of networks that share a denoiser adapter: ``denoiser(net, schedule, prediction_type)``
    and ``schedule(scheduler, tokens, steps)``, the (M1) schedule of its diffusers scheduler for an
    image of ``tokens`` latent tokens sampled in ``steps`` steps."""

    name: str
    denoiser: Callable[[nn.Module, NoiseSchedule, str], NetworkDenoiser]
    schedule: Callable[..., NoiseSchedule]
    flow: bool = True


def text_width_check(key: str, width_field: str = "joint_attention_dim") -> Callable:
    """A backbone's start-up check that its network takes text states as wide as the encoder's ``key`` rows."""

    def check(cfg, name: str, c, row: dict) -> None:
        width, expected = row[key].shape[-1], getattr(c, width_field)
        if expected != width:
            raise ConfigError(f"backbone: the {name} transformer takes text states of width {expected}, the text encoder gives {width}")

    return check


def default_latent_shape(cfg, vae) -> tuple[int, int, int]:
    """(C, H / f, W / f) for a VAE that downsamples by f = 2^(levels - 1)."""
    factor = 2 ** (len(vae.config.block_out_channels) - 1)
    side = cfg.resolution // factor
    return (vae.config.latent_channels, side, side)


def vae_factor(vae) -> int:
    return 2 ** (len(vae.config.block_out_channels) - 1)


@dataclass(frozen=True)
class Backbone:
    """A text-to-image pipeline that didr trains. Beside its network family and folder:

    - ``text_encoder(load, cfg, device, dtype)`` builds the prompt encoder from ``load(cls, subfolder)``;
      ``shared_cond(cfg)`` are conditioning fields every prompt shares (SDXL's ``time_ids``);
    - ``check(cfg, name, net_config, row)`` refuses a network that does not fit the text encoder;
    - ``latent_shape(cfg, vae)``, ``latent_multiple(vae)`` (the resolution's divisor) and
      ``decode(vae, latents)`` place images in the backbone's latents and back;
    - ``tokens(shape)`` is the latent token count that resolution-dependent time shifts use;
    - ``call(cfg)`` are the stock pipeline's keyword arguments that sample a generator beside its
      times (no CFG, the text length, the size); ``times_argument`` names how times are passed;
    - ``guidance_rescale(cfg)`` is the pipeline's renormalisation of a guided prediction, if any;
    - ``distilled_guidance``: the network takes its guidance as an input (FLUX.1-dev) and has no
      negative prompt: CFG (M4) and a negative prompt are refused.
    """

    kind: str
    family: Family
    network: str  # the pipeline folder's network subfolder, and its name in LoRA files
    network_class: str  # the diffusers class of the network
    pipeline_class: str  # the stock diffusers pipeline
    cfg_scale: float  # the reference's default CFG weight w of (M4)
    text_encoder: Callable
    times_argument: str = "sigmas"  # how the pipeline takes explicit times: "sigmas" (flow) or "timesteps" (discrete)
    call: Callable[[Any], dict] = field(default=lambda cfg: {})
    check: Callable = field(default=lambda cfg, name, net_config, row: None)
    shared_cond: Callable = field(default=lambda cfg: {})
    zero_null_prompt: bool = False  # the empty prompt's embedding is zeros (SDXL's force_zeros_for_empty_prompt)
    latent_shape: Callable = default_latent_shape
    latent_multiple: Callable = field(default=lambda vae: 2 * vae_factor(vae))  # transformers patchify 2x2 latents
    decode: Callable = scaled_decode
    tokens: Callable[[tuple], int] = field(default=lambda shape: (shape[-2] // 2) * (shape[-1] // 2))
    packed_channels: int = 1  # the network takes 2x2-packed tokens of this many latent channels' worth (FLUX.1, Qwen-Image: 4)
    guidance_rescale: Callable = field(default=lambda cfg: None)
    distilled_guidance: bool = False
    kohya_lora: bool = False  # diffusers converts its LoRA to the kohya layout (A1111, ComfyUI)

    def network_cls(self):
        import diffusers

        return getattr(diffusers, self.network_class)

    def pipeline_cls(self):
        import diffusers

        return getattr(diffusers, self.pipeline_class)

    def sampling_scheduler(self, base_config: dict, renoise: str):
        """A scheduler of the base's kind that takes the generator's own times and re-noises as it
        does: for discrete schedules LCM's fresh noise, or Euler on the plain sigmas, which is DDIM
        (x_next = x0 + s_next / s (x - x0) in the sigma parameterisation) and ends at x0; for flows
        the flow LCM or Euler, with the shift off so that the pipeline uses the times as given."""
        import diffusers

        cls = getattr(diffusers, RENOISE_SCHEDULERS["flow" if self.family.flow else "unet"][renoise])
        if self.family.flow:
            extra = {"shift": 1.0, "use_dynamic_shifting": False}
        elif renoise == "ddim":  # the latents scaled by sqrt(sigma^2 + 1) at the first time ("leading"), plain sigmas, ending at 0
            extra = {"timestep_spacing": "leading", "use_karras_sigmas": False, "use_exponential_sigmas": False, "use_beta_sigmas": False,
                     "final_sigmas_type": "zero", "interpolation_type": "linear"}
        else:
            extra = {}
        return cls.from_config({**base_config, **extra})

    def pipeline_times(self, times: list[float], schedule: NoiseSchedule) -> dict:
        """The generator's times as the stock pipeline takes them: discrete timesteps t = (n + 1) / N,
        or the flow sigmas themselves (the exported scheduler does not shift them)."""
        if self.times_argument == "timesteps":
            return {"timesteps": [round(t * schedule.num_train_timesteps) - 1 for t in times]}
        return {"sigmas": [float(t) for t in times]}
