"""FLUX.2 [klein] (``Flux2Transformer2DModel``, ``Flux2KleinPipeline``): latents patchified 2x2 into
4C channels and normalised by the VAE's batch-norm statistics, then flattened into tokens with 4-D
position ids; fed t, predicting eps - x_0. Its text conditioning is the stock pipeline's: three of
Qwen3's hidden layers, stacked. Its time shift depends on the resolution and on the step count
(``compute_empirical_mu``). The step-distilled [klein] models sample in 4 steps without guidance
(the pipeline's ``is_distilled``): CFG (M4) and a negative prompt are refused for them."""

from __future__ import annotations

import torch

from didr.diffusion.denoiser import FlowDenoiser
from didr.models.backbones.base import Backbone, DiffusersCall, Family, flow_schedule, text_width_check
from didr.models.decode import vae_dtype
from didr.models.text import PipelineTextEncoder


def empirical_mu(tokens: int, steps: int) -> float:
    """FLUX.2's resolution- and step-dependent shift (``pipeline_flux2.compute_empirical_mu``)."""
    a1, b1, a2, b2 = 8.73809524e-05, 1.89833333, 0.00016927, 0.45666666
    if tokens > 4300:
        return a2 * tokens + b2
    m_200, m_10 = a2 * tokens + b2, a1 * tokens + b1
    a = (m_200 - m_10) / 190.0
    return a * steps + (m_200 - 200.0 * a)


def positions(b: int, *sizes: int, device=None):
    """(B, prod(sizes), 4) integer coordinates (t, h, w, l), one axis per size (Flux2Pipeline's ids)."""
    return torch.cartesian_prod(*(torch.arange(n, device=device) for n in sizes)).unsqueeze(0).expand(b, -1, -1)


class Flux2Denoiser(DiffusersCall, FlowDenoiser):
    """FLUX.2's transformer on patchified latents (B, 4C, h, w): h * w tokens with (0, i, j, 0) ids,
    the text's tokens with (0, 0, 0, k) ids; no guidance input ([klein])."""

    def call_backbone(self, x_t, t, cond):
        b, c, h, w = x_t.shape
        text = cond["encoder_hidden_states"].to(x_t.dtype)
        out = self.net(
            hidden_states=x_t.reshape(b, c, h * w).permute(0, 2, 1),
            timestep=t.to(x_t.dtype),
            guidance=None,
            encoder_hidden_states=text,
            txt_ids=positions(b, 1, 1, 1, text.shape[1], device=x_t.device),
            img_ids=positions(b, 1, h, w, 1, device=x_t.device),
            return_dict=False,
        )[0]
        return out[:, : h * w].permute(0, 2, 1).reshape(b, c, h, w)


def flux2_rows(pipe, prompts: list[str]) -> list[dict]:
    embeds, _ = pipe.encode_prompt(prompts, device="cpu", max_sequence_length=pipe.didr_max_sequence_length)
    return [{"encoder_hidden_states": e} for e in embeds]


def flux2_text_encoder(load, cfg, device, dtype):
    pipe = load(None, transformer=None, vae=None)
    pipe.didr_max_sequence_length = cfg.max_sequence_length
    return PipelineTextEncoder(pipe.to(device), flux2_rows)


def flux2_latent_shape(cfg, vae) -> tuple[int, int, int]:
    factor = 2 ** (len(vae.config.block_out_channels) - 1)
    side = cfg.resolution // (2 * factor)
    return (4 * vae.config.latent_channels, side, side)


def flux2_decode(vae, z):
    """Undo the batch-norm normalisation and the 2x2 patchify, then decode (Flux2KleinPipeline)."""
    mean = vae.bn.running_mean.view(1, -1, 1, 1).to(z)
    std = torch.sqrt(vae.bn.running_var.view(1, -1, 1, 1) + vae.config.batch_norm_eps).to(z)
    z = z * std + mean
    b, c, h, w = z.shape
    z = z.reshape(b, c // 4, 2, 2, h, w).permute(0, 1, 4, 2, 5, 3).reshape(b, c // 4, h * 2, w * 2)
    return vae.decode(z.to(vae_dtype(vae)), return_dict=False)[0]


def flux2_call(cfg) -> dict:
    """No CFG (guidance 1), the run's text length and size."""
    return {"guidance_scale": 1.0, "max_sequence_length": cfg.max_sequence_length, "height": cfg.resolution, "width": cfg.resolution}


FLUX2_FAMILY = Family("flux2", lambda net, schedule, prediction_type="flow": Flux2Denoiser(net, schedule),
                      lambda scheduler, tokens=4096, steps=50: flow_schedule(scheduler, tokens, steps, mu=empirical_mu))
#: the [klein] base's guidance 4; its step-distilled models take none
FLUX2 = Backbone("flux2", FLUX2_FAMILY, "transformer", "Flux2Transformer2DModel", "Flux2KleinPipeline", 4.0, flux2_text_encoder, call=flux2_call,
                 check=text_width_check("encoder_hidden_states"), latent_shape=flux2_latent_shape, latent_multiple=lambda vae: 2 * 2 ** (len(vae.config.block_out_channels) - 1),
                 decode=flux2_decode, tokens=lambda shape: shape[-2] * shape[-1])
