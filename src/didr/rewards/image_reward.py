"""ImageReward (Xu et al. 2023, THUDM/ImageReward): BLIP's image-grounded text encoder plus an MLP.

The official model (``ImageReward/ImageReward.py``) runs BLIP's ViT-L/16 on the image, feeds
its tokens as cross-attention context to BLIP's BERT text encoder (``models/BLIP/med.py``) over
the prompt, takes the [CLS] state, applies :class:`~didr.rewards.heads.MLPHead` and standardises:
``(mlp(h) - 0.16717362830052426) / 1.0333394966054072``. Scores are about -2 to 2.

:class:`ImageRewardModel` builds the same network from transformers' ``BlipVisionModel`` and
``BlipTextModel``; :func:`map_image_reward_state_dict` renames the official ``ImageReward.pt``
keys onto it (the text encoder already uses BERT's names; the ViT uses timm's). Preprocessing:
torchvision ``Resize(224, BICUBIC)``, ``CenterCrop(224)``, OpenAI CLIP mean/std; prompts are
tokenised with bert-base-uncased plus BLIP's two added tokens, padded to 35.
"""

from __future__ import annotations

import json
import math
import os
import re
from typing import Any

import torch
from torch import Tensor, nn

from didr.errors import ModelLoadError
from didr.hub import empty_model, freeze, from_pretrained, has_files, load_state_dict, load_strict, resolve_file
from didr.rewards.base import FrozenReward, prompt_list
from didr.rewards.heads import MLPHead
from didr.rewards.preprocess import ImagePreprocess, torchvision_clip_preprocess

IMAGE_REWARD_HUB = "THUDM/ImageReward"
CHECKPOINT_FILES = ("ImageReward.pt", "ImageReward.safetensors")
MED_CONFIG = "med_config.json"
BERT_HUB = "bert-base-uncased"
#: the standardisation constants of ImageReward.py
SCORE_MEAN, SCORE_STD = 0.16717362830052426, 1.0333394966054072
MAX_PROMPT_TOKENS = 35
#: keys of the official checkpoint that the score does not use: BLIP's contrastive projections, and
#: a position-id buffer that transformers recomputes
IGNORED_KEYS = re.compile(r"^blip\.(vision_proj|text_proj)\.|^blip\.text_encoder\.embeddings\.position_ids$")

# timm ViT (BLIP's vit.py) -> transformers BlipVisionModel
_VIT_TOP = {
    "cls_token": "embeddings.class_embedding",
    "pos_embed": "embeddings.position_embedding",
    "patch_embed.proj.weight": "embeddings.patch_embedding.weight",
    "patch_embed.proj.bias": "embeddings.patch_embedding.bias",
    "norm.weight": "post_layernorm.weight",
    "norm.bias": "post_layernorm.bias",
}
_VIT_BLOCK = {"norm1": "layer_norm1", "norm2": "layer_norm2", "attn.qkv": "self_attn.qkv", "attn.proj": "self_attn.projection", "mlp.fc1": "mlp.fc1", "mlp.fc2": "mlp.fc2"}
_BLOCK = re.compile(r"^blocks\.(\d+)\.(.+)\.(weight|bias)$")


class ImageRewardModel(nn.Module):
    """BLIP vision tower, BLIP's cross-attending text encoder (no pooler) and the MLP head."""

    def __init__(self, vision_config, text_config):
        super().__init__()
        from transformers.models.blip.modeling_blip import BlipVisionModel
        from transformers.models.blip.modeling_blip_text import BlipTextModel

        self.vision_model = BlipVisionModel(vision_config)
        self.text_encoder = BlipTextModel(text_config, add_pooling_layer=False)
        self.mlp = MLPHead(text_config.hidden_size)

    def forward(self, pixel_values: Tensor, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        """Standardised scores (B,)."""
        image_embeds = self.vision_model(pixel_values=pixel_values).last_hidden_state
        image_atts = torch.ones(image_embeds.shape[:-1], dtype=torch.long, device=image_embeds.device)
        text = self.text_encoder(
            input_ids=input_ids,
            attention_mask=attention_mask,
            encoder_hidden_states=image_embeds,
            encoder_attention_mask=image_atts,
            is_decoder=False,  # bidirectional self-attention, as med.py's BertModel defaults to
        ).last_hidden_state
        return ((self.mlp(text[:, 0].float()) - SCORE_MEAN) / SCORE_STD).squeeze(-1)


def map_image_reward_state_dict(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """Official ``ImageReward.pt`` keys (``blip.visual_encoder.*``, ``blip.text_encoder.*``, ``mlp.*``) to :class:`ImageRewardModel`'s."""
    out, unknown = {}, []
    for key, value in state.items():
        if IGNORED_KEYS.search(key):
            continue
        if key.startswith("blip.visual_encoder."):
            name = _map_vit_key(key[len("blip.visual_encoder.") :])
            if name is None:
                unknown.append(key)
            else:
                out[f"vision_model.{name}"] = value
        elif key.startswith("blip.text_encoder."):
            out["text_encoder." + key[len("blip.text_encoder.") :]] = value
        elif key.startswith("mlp."):
            out[key] = value
        else:
            unknown.append(key)
    if unknown:
        raise ModelLoadError(f"unknown ImageReward key(s) {', '.join(sorted(unknown)[:4])}{', ...' if len(unknown) > 4 else ''}")
    return out


def _map_vit_key(name: str) -> str | None:
    if name in _VIT_TOP:
        return _VIT_TOP[name]
    m = _BLOCK.match(name)
    if m and m.group(2) in _VIT_BLOCK:
        return f"encoder.layers.{m.group(1)}.{_VIT_BLOCK[m.group(2)]}.{m.group(3)}"
    return None


def vision_config_from_state_dict(state: dict[str, Tensor]):
    """BLIP ViT settings read off the official checkpoint's shapes (ViT-L/16 at 224 for ImageReward v1.0).

    BLIP's ViTs use 64-wide attention heads (ViT-B: 768 / 12, ViT-L: 1024 / 16) and
    LayerNorm eps 1e-6 (vit.py), which shapes alone cannot tell.
    """
    from transformers import BlipVisionConfig

    prefix = "blip.visual_encoder."
    try:
        width = state[prefix + "cls_token"].shape[-1]
        patch = state[prefix + "patch_embed.proj.weight"].shape[-1]
        n_patches = state[prefix + "pos_embed"].shape[1] - 1
        hidden = state[prefix + "blocks.0.mlp.fc1.weight"].shape[0]
    except KeyError as err:
        raise ModelLoadError(f"ImageReward checkpoint lacks {err.args[0]}; it is not an ImageReward.pt state dict") from err
    depth = len({k.split(".")[3] for k in state if k.startswith(prefix + "blocks.")})
    return BlipVisionConfig(
        hidden_size=width, intermediate_size=hidden, num_hidden_layers=depth, num_attention_heads=max(width // 64, 1),
        image_size=int(math.isqrt(n_patches)) * patch, patch_size=patch, hidden_act="gelu", layer_norm_eps=1e-6,
    )


def text_config_from_med(med: dict, encoder_width: int):
    """transformers ``BlipTextConfig`` from BLIP's ``med_config.json`` (a BertConfig with cross-attention)."""
    from transformers import BlipTextConfig

    keys = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "max_position_embeddings",
            "hidden_act", "layer_norm_eps", "pad_token_id")
    return BlipTextConfig(**{k: med[k] for k in keys if k in med}, encoder_hidden_size=encoder_width,
                          hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)


def load_blip_tokenizer(source: str | os.PathLike):
    """BERT's tokenizer with the tokens BLIP adds (``init_tokenizer`` in blip.py): [DEC] as bos, [ENC]."""
    from transformers import BertTokenizer

    tokenizer = from_pretrained(BertTokenizer, source, "ImageReward tokenizer", weights=False)
    tokenizer.add_special_tokens({"bos_token": "[DEC]"})
    tokenizer.add_special_tokens({"additional_special_tokens": ["[ENC]"]})
    return tokenizer


class ImageReward(FrozenReward):
    """ImageReward v1.0 as a differentiable reward on images (B, 3, H, W) in [-1, 1]."""

    name = "imagereward"
    typical_range = (-2.0, 2.0)

    def __init__(self, model: ImageRewardModel, tokenizer, preprocess: ImagePreprocess):
        super().__init__()
        self.model, self.tokenizer, self.preprocess = model, tokenizer, preprocess

    def forward(self, images: Tensor, prompts: Any = None) -> Tensor:
        texts = prompt_list(prompts, images.shape[0], self.name)
        device = self.model.mlp.layers[0].weight.device
        tokens = self.tokenizer(texts, padding="max_length", truncation=True, max_length=MAX_PROMPT_TOKENS, return_tensors="pt").to(device)
        pixels = self.preprocess(images.to(device)).to(self.model.vision_model.dtype)
        return self.model(pixels, tokens["input_ids"], tokens["attention_mask"])


def load_image_reward(
    source: str | os.PathLike = IMAGE_REWARD_HUB,
    *,
    tokenizer: str | os.PathLike | None = None,
    device: Any = None,
    dtype: torch.dtype | None = None,
) -> ImageReward:
    """ImageReward from a folder (or hub repo) holding ``ImageReward.pt`` and ``med_config.json``.

    ``tokenizer``: a BERT tokenizer folder or hub id; default the folder when it holds ``vocab.txt``,
    else ``bert-base-uncased`` (as the official code). ``dtype``: the model's, float32 by default
    whatever the checkpoint stores (the official code copies the checkpoint into a float32 model).
    """
    what = "ImageReward"
    ckpt = resolve_file(source, CHECKPOINT_FILES, f"{what} checkpoint")
    med_source = ckpt.parent if has_files(ckpt.parent, MED_CONFIG) else source
    med = json.loads(resolve_file(med_source, [MED_CONFIG], f"{what} text-encoder config").read_text())
    state = load_state_dict(ckpt, what)
    vision_cfg = vision_config_from_state_dict(state)
    text_cfg = text_config_from_med(med, vision_cfg.hidden_size)
    model = empty_model(lambda: ImageRewardModel(vision_cfg, text_cfg))
    load_strict(model, map_image_reward_state_dict(state), what, ckpt, assign=True)
    if tokenizer is None:
        tokenizer = ckpt.parent if has_files(ckpt.parent, "vocab.txt") else BERT_HUB
    tok = load_blip_tokenizer(tokenizer)
    if len(tok) > text_cfg.vocab_size:
        raise ModelLoadError(f"{what}: tokenizer {tokenizer} has {len(tok)} tokens, more than the text encoder's {text_cfg.vocab_size}")
    preprocess = torchvision_clip_preprocess(vision_cfg.image_size)
    return ImageReward(freeze(model, device, dtype), tok, preprocess)
