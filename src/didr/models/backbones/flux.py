"""FLUX.1 (``FluxTransformer2DModel``): latents packed into 2x2 tokens with position ids; fed t (the
pipeline's timestep / 1000), predicting eps - x_0. Its text conditioning is the stock pipeline's
(CLIP-L pooled, T5 states). FLUX.1-schnell samples in 1-4 steps; FLUX.1-dev is guidance-distilled:
the guidance is an input of the network (``backbone.distilled_guidance``, 3.5 by its model card),
so it takes neither CFG (M4) nor a negative prompt."""

from __future__ import annotations

import torch

from didr.diffusion.denoiser import FlowDenoiser
from didr.errors import ConfigError
from didr.models.backbones.base import Backbone, DiffusersCall, Family, flow_schedule
from didr.models.backbones.sd3 import check_sd3
from didr.models.text import PipelineTextEncoder


def pack(x):
    """(B, C, H, W) latents -> (B, H/2 * W/2, 4C) tokens (FluxPipeline._pack_latents)."""
    b, c, h, w = x.shape
    return x.reshape(b, c, h // 2, 2, w // 2, 2).permute(0, 2, 4, 1, 3, 5).reshape(b, h * w // 4, c * 4)


def unpack(tokens, shape):
    b, c, h, w = shape
    return tokens.reshape(b, h // 2, w // 2, c, 2, 2).permute(0, 3, 1, 4, 2, 5).reshape(b, c, h, w)


class FluxDenoiser(DiffusersCall, FlowDenoiser):
    """Flux: latents packed into 2x2 tokens with position ids; fed t (the pipeline's timestep / 1000).
    ``guidance``: the distilled guidance input, where the network has one (FLUX.1-dev)."""

    guidance: float | None = None

    def call_backbone(self, x_t, t, cond):
        b, c, h, w = x_t.shape
        ids = torch.zeros(h // 2, w // 2, 3, device=x_t.device)
        ids[..., 1] += torch.arange(h // 2, device=x_t.device)[:, None]
        ids[..., 2] += torch.arange(w // 2, device=x_t.device)[None, :]
        text = cond["encoder_hidden_states"].to(x_t.dtype)
        embeds_guidance = getattr(self.net.config, "guidance_embeds", False)
        guidance = torch.full((b,), self.guidance if self.guidance is not None else 3.5, device=x_t.device) if embeds_guidance else None
        out = self.net(
            hidden_states=pack(x_t),
            timestep=t.to(x_t.dtype),
            guidance=guidance,
            pooled_projections=cond["pooled_projections"].to(x_t.dtype),
            encoder_hidden_states=text,
            txt_ids=torch.zeros(text.shape[1], 3, device=x_t.device),
            img_ids=ids.reshape(-1, 3),
            return_dict=False,
        )[0]
        return unpack(out, x_t.shape)


def flux_rows(pipe, prompts: list[str]) -> list[dict]:
    embeds, pooled, _ = pipe.encode_prompt(prompt=prompts, prompt_2=None, device="cpu", max_sequence_length=pipe.didr_max_sequence_length)
    return [{"encoder_hidden_states": e, "pooled_projections": p} for e, p in zip(embeds, pooled)]


def flux_text_encoder(load, cfg, device, dtype):
    pipe = load(None, transformer=None, vae=None)
    pipe.didr_max_sequence_length = cfg.max_sequence_length
    return PipelineTextEncoder(pipe.to(device), flux_rows)


def flux_call(cfg) -> dict:
    """The distilled guidance where the generator takes one (FLUX.1-dev), else none; text length and size."""
    return {"guidance_scale": cfg.distilled_guidance, "max_sequence_length": cfg.max_sequence_length, "height": cfg.resolution, "width": cfg.resolution}


def check_flux(cfg, name: str, c, row: dict) -> None:
    check_sd3(cfg, name, c, row)
    if c.in_channels % 4:
        raise ConfigError(f"backbone: the {name} transformer takes {c.in_channels} channels, not the 4 x latent channels of packed 2x2 tokens")


FLUX_FAMILY = Family("flux", lambda net, schedule, prediction_type="flow": FluxDenoiser(net, schedule), flow_schedule)
FLUX = Backbone("flux", FLUX_FAMILY, "transformer", "FluxTransformer2DModel", "FluxPipeline", 1.0, flux_text_encoder, call=flux_call,
                check=check_flux, distilled_guidance=True, packed_channels=4)
