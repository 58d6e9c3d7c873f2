"""Z-Image (``ZImageTransformer2DModel``): a flow-matching DiT with a Qwen3 text encoder. Its
forward takes lists of (C, 1, H, W) latents and (L_i, D) caption features; it is fed 1 - t
(``pipeline_z_image.py`` feeds (1000 - timestep) / 1000) and predicts x_0 - eps, the negated flow
velocity. ``ZImagePipeline``'s ``guidance_scale`` g means pos + g (pos - neg), which is (M4) with
w = 1 + g."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from didr.diffusion.denoiser import FlowDenoiser
from didr.diffusion.schedules import NoiseSchedule
from didr.errors import ConfigError
from didr.models.backbones.base import Backbone, DiffusersCall, Family, flow_schedule
from didr.models.text import QwenTextEncoder


class ZImageDenoiser(DiffusersCall, FlowDenoiser):
    """Z-Image's transformer: lists of (C, 1, H, W) latents and (L_i, D) caption features."""

    def __init__(self, net: nn.Module, schedule: NoiseSchedule):
        super().__init__(net, schedule, sign=-1.0)

    def call_backbone(self, x_t, t, cond):
        frames = list(x_t.unsqueeze(2).unbind(0))
        caps = [c.to(x_t.dtype) for c in cond["cap_feats"]]
        out = self.net(frames, 1.0 - t.to(x_t.dtype), caps, return_dict=False)[0]
        return torch.stack(out).squeeze(2)


def qwen_text_encoder(load, cfg, device, dtype):
    from transformers import AutoModel, AutoTokenizer

    return QwenTextEncoder(load(AutoTokenizer, "tokenizer"), load(AutoModel, "text_encoder").eval().to(device), cfg.max_sequence_length)


def check_caption_width(cfg, name: str, c, row: dict) -> None:
    width = row["cap_feats"].shape[-1]
    if c.cap_feat_dim != width:
        raise ConfigError(f"backbone: the {name} transformer expects caption features of width {c.cap_feat_dim}, the text encoder gives {width}")


def clamp_velocity_norm(limit: float):
    """ZImagePipeline's ``cfg_normalization``: the guided velocity's norm, over the whole sample,
    at most ``limit`` times the conditional one's. The flow velocity is (x_t - D) / s."""

    def rescale(x_t: Tensor, s: Tensor, guided: Tensor, conditional: Tensor) -> Tensor:
        v, v_cond = (x_t - guided) / s, (x_t - conditional) / s
        dims = tuple(range(1, v.ndim))
        most = limit * torch.linalg.vector_norm(v_cond, dim=dims, keepdim=True)
        norm = torch.linalg.vector_norm(v, dim=dims, keepdim=True)
        return x_t - s * torch.where(norm > most, v * (most / norm), v)

    return rescale


def zimage_call(cfg) -> dict:
    """No CFG (guidance 0), the run's text length and size."""
    return {"guidance_scale": 0.0, "max_sequence_length": cfg.max_sequence_length, "height": cfg.resolution, "width": cfg.resolution}


ZIMAGE_FAMILY = Family("zimage", lambda net, schedule, prediction_type="flow": ZImageDenoiser(net, schedule), flow_schedule)
#: the pipeline's default guidance 4, plus one: (M4)'s w = 1 + g; ``cfg_normalization`` as its model card sets it
ZIMAGE = Backbone("zimage", ZIMAGE_FAMILY, "transformer", "ZImageTransformer2DModel", "ZImagePipeline", 5.0, qwen_text_encoder, call=zimage_call,
                  check=check_caption_width, guidance_rescale=lambda cfg: clamp_velocity_norm(cfg.cfg_normalization) if cfg.cfg_normalization else None)
