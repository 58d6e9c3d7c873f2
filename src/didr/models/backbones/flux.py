"""FLUX.1 (``FluxTransformer2DModel``): latents packed into 2x2 tokens with position ids; fed t (the
pipeline's timestep / 1000), predicting eps - x_0; FLUX.1-dev adds its distilled guidance input."""

from __future__ import annotations

import torch

from didr.diffusion.denoiser import FlowDenoiser
from didr.models.backbones.base import DiffusersCall, Family, flow_schedule


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


FLUX_FAMILY = Family("flux", lambda net, schedule, prediction_type="flow": FluxDenoiser(net, schedule), flow_schedule)
