"""Z-Image (``ZImageTransformer2DModel``): a flow-matching DiT with a Qwen3 text encoder. Its
forward takes lists of (C, 1, H, W) latents and (L_i, D) caption features; it is fed 1 - t
(``pipeline_z_image.py`` feeds (1000 - timestep) / 1000) and predicts x_0 - eps, the negated flow
velocity. ``ZImagePipeline``'s ``guidance_scale`` g means pos + g (pos - neg), which is (M4) with
w = 1 + g."""

from __future__ import annotations

import torch
from torch import nn

from didr.diffusion.denoiser import FlowDenoiser
from didr.diffusion.schedules import NoiseSchedule
from didr.errors import ConfigError
from didr.models.backbones.base import Backbone, DiffusersCall, Family, flow_sampling, flow_schedule
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


ZIMAGE_FAMILY = Family("zimage", lambda net, schedule, prediction_type="flow": ZImageDenoiser(net, schedule), flow_schedule)
#: the pipeline's default guidance 4, plus one: (M4)'s w = 1 + g
ZIMAGE = Backbone("zimage", ZIMAGE_FAMILY, "transformer", "ZImageTransformer2DModel", "ZImagePipeline", 5.0, qwen_text_encoder, flow_sampling,
                  check_caption_width, latent_multiple=2)  # Z-Image patchifies 2x2 latents
