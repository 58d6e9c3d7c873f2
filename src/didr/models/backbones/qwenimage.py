"""Qwen-Image (``QwenImageTransformer2DModel``): a flow-matching MMDiT on 2x2-packed latents of a
Wan-style video VAE (one frame, normalised by its per-channel mean and std), fed t, predicting
eps - x_0; its text conditioning is the stock pipeline's (Qwen2.5-VL's last hidden states after the
prompt template, one length per prompt, with a mask). Its true CFG rescales the guided velocity of
every token to the conditional one's norm, which didr reproduces (:func:`token_norm_rescale`)."""

from __future__ import annotations

import torch
from torch import Tensor

from didr.diffusion.denoiser import FlowDenoiser
from didr.models.backbones.base import Backbone, DiffusersCall, Family, flow_schedule, text_width_check
from didr.models.backbones.flux import pack, unpack
from didr.models.decode import vae_dtype
from didr.models.text import PipelineTextEncoder


def pad_tokens(tokens: list[Tensor]) -> tuple[Tensor, Tensor]:
    """Per-prompt (L_i, D) states -> (B, max L, D) zero-padded, and the (B, max L) mask."""
    longest = max(t.shape[0] for t in tokens)
    states = torch.stack([torch.cat([t, t.new_zeros(longest - t.shape[0], t.shape[1])]) for t in tokens])
    mask = torch.stack([torch.arange(longest, device=t.device) < t.shape[0] for t in tokens]).long()
    return states, mask


class QwenImageDenoiser(DiffusersCall, FlowDenoiser):
    """Qwen-Image's transformer on 2x2-packed tokens, with the image's (frames, h, w) shape."""

    def call_backbone(self, x_t, t, cond):
        b, c, h, w = x_t.shape
        states, mask = pad_tokens([s.to(x_t.dtype) for s in cond["text_tokens"]])
        out = self.net(
            hidden_states=pack(x_t),
            timestep=t.to(x_t.dtype),
            encoder_hidden_states=states,
            encoder_hidden_states_mask=mask,
            img_shapes=[[(1, h // 2, w // 2)]] * b,
            return_dict=False,
        )[0]
        return unpack(out, x_t.shape)


def token_norm_rescale(x_t: Tensor, s: Tensor, guided: Tensor, conditional: Tensor) -> Tensor:
    """QwenImagePipeline's true CFG: each packed token's guided velocity scaled to the norm of its
    conditional velocity. The flow velocity is (x_t - D) / s."""
    v, v_cond = pack((x_t - guided) / s), pack((x_t - conditional) / s)
    v = v * (torch.linalg.vector_norm(v_cond, dim=-1, keepdim=True) / torch.linalg.vector_norm(v, dim=-1, keepdim=True))
    return x_t - s * unpack(v, x_t.shape)


def qwen_rows(pipe, prompts: list[str]) -> list[dict]:
    embeds, mask = pipe.encode_prompt(prompts, device="cpu", max_sequence_length=pipe.didr_max_sequence_length)
    mask = torch.ones(embeds.shape[:2], dtype=torch.long) if mask is None else mask
    return [{"text_tokens": e[m.bool()]} for e, m in zip(embeds, mask)]


def qwen_text_encoder(load, cfg, device, dtype):
    pipe = load(None, transformer=None, vae=None)
    pipe.didr_max_sequence_length = cfg.max_sequence_length
    return PipelineTextEncoder(pipe.to(device), qwen_rows)


def qwen_latent_shape(cfg, vae) -> tuple[int, int, int]:
    side = cfg.resolution // 2 ** len(vae.config.temperal_downsample)
    return (vae.config.z_dim, side, side)


def qwen_decode(vae, z):
    """Undo the per-channel normalisation, decode one frame (QwenImagePipeline)."""
    mean = torch.tensor(vae.config.latents_mean).view(1, -1, 1, 1, 1).to(z)
    std = torch.tensor(vae.config.latents_std).view(1, -1, 1, 1, 1).to(z)
    return vae.decode((z[:, :, None] * std + mean).to(vae_dtype(vae)), return_dict=False)[0][:, :, 0]


def qwen_call(cfg) -> dict:
    """No CFG (true_cfg_scale 1), the run's text length and size."""
    return {"true_cfg_scale": 1.0, "max_sequence_length": cfg.max_sequence_length, "height": cfg.resolution, "width": cfg.resolution}


QWEN_FAMILY = Family("qwenimage", lambda net, schedule, prediction_type="flow": QwenImageDenoiser(net, schedule), flow_schedule)
#: the model card's true_cfg_scale 4, with its token-wise renormalisation
QWENIMAGE = Backbone("qwenimage", QWEN_FAMILY, "transformer", "QwenImageTransformer2DModel", "QwenImagePipeline", 4.0, qwen_text_encoder,
                     call=qwen_call, check=text_width_check("text_tokens"), latent_shape=qwen_latent_shape,
                     latent_multiple=lambda vae: 2 * 2 ** len(vae.config.temperal_downsample), decode=qwen_decode,
                     guidance_rescale=lambda cfg: token_norm_rescale, packed_channels=4)
