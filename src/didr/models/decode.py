"""Where images appear: a differentiable VAE decode of latents, and a reward on the decoded images."""

from __future__ import annotations

from typing import Any, Callable

import torch
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint as grad_checkpoint


def vae_dtype(vae: nn.Module) -> torch.dtype:
    return next(vae.parameters()).dtype


def scaled_decode(vae: nn.Module, z: Tensor) -> Tensor:
    """``vae.decode(z / scaling_factor + shift_factor)``: undoes the pipelines' latent normalisation
    (SD, SDXL, SD3, FLUX.1, Z-Image)."""
    shift = float(getattr(vae.config, "shift_factor", None) or 0.0)
    return vae.decode((z / float(vae.config.scaling_factor) + shift).to(vae_dtype(vae)), return_dict=False)[0]


class VaeDecoder(nn.Module):
    """Differentiable latent -> image decode, images in [-1, 1].

    ``decode(vae, latents)`` is the backbone's own map from its float32 latents to images (by
    default :func:`scaled_decode`), run in the VAE's dtype; the images come back in float32.
    Memory bounds: ``micro_batch`` decodes that many latents at a time; ``checkpoint`` recomputes the
    decoder's activations in the backward pass, block by block where the VAE supports diffusers'
    gradient checkpointing (the peak is then one block's, not the whole decode's), else per micro-batch;
    ``downscale`` > 1 decodes latents bilinearly shrunk by that factor (smaller images, for
    rewards that resize to 224 px anyway).
    """

    def __init__(self, vae: nn.Module, micro_batch: int = 0, checkpoint: bool = False, downscale: float = 1.0,
                 decode: Callable[[nn.Module, Tensor], Tensor] = scaled_decode):
        super().__init__()
        self.vae, self.micro_batch, self.checkpoint, self.downscale, self.decode = vae, micro_batch, checkpoint, downscale, decode
        self.per_block = checkpoint and getattr(vae, "_supports_gradient_checkpointing", False)
        if self.per_block:
            vae.enable_gradient_checkpointing()

    def _decode(self, z: Tensor) -> Tensor:
        return self.decode(self.vae, z).float()

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
