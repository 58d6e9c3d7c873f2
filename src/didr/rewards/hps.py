"""HPSv2.1 (Wu et al. 2023, tgxs002/HPSv2): an open_clip ViT-H-14 checkpoint run as a transformers CLIP.

The official scorer builds open_clip's ViT-H-14, loads ``HPS_v2.1_compressed.pt``
(``{"state_dict": ...}``, open_clip key names) and scores ``image_features @ text_features.T``
with unit-norm features; HPSv2's benchmark and the papers that report it multiply by 100
(about 25-35), and so does :class:`HPSv2Reward`. open_clip needs torchvision, so
:func:`open_clip_to_transformers` maps the checkpoint onto ``transformers.CLIPModel``: the two
implement the same network (pre-LayerNorm ViT with a class token, causal text transformer pooled
at the end-of-text token, GELU for ViT-H-14) and differ only in names, in the fused attention
input projection, and in storing projections as ``x @ W`` matrices rather than linear layers.

What ``img_score`` does around the network, :class:`HPSv2Reward` does too:

- images: open_clip's transform built with ``light_augmentation=True``, a letterbox (longest edge
  to 224, bicubic, zero-padded to a square; :class:`~didr.rewards.preprocess.LetterboxPreprocess`),
  not the shortest-edge resize and centre crop of open_clip's usual validation transform;
- prompts: open_clip's cleaning (:func:`~didr.rewards.text_cleaning.open_clip_clean`) before the
  BPE, whose vocabulary is CLIP-H's (the transformers tokenizer of ``laion/CLIP-ViT-H-14-laion2B-s32B-b79K``);
- weights: copied into a float32 model (``load_state_dict`` into the model that
  ``create_model_and_transforms`` built), whatever dtype the checkpoint stores.

``benchmarks/hps_official.py`` compares the scores with ``img_score.score`` on the same weights.
"""

from __future__ import annotations

import json
import os
import re
from typing import Any

import torch
from torch import Tensor

from didr.errors import ModelLoadError
from didr.hub import empty_model, freeze, from_pretrained, has_files, load_state_dict, load_strict, resolve_file
from didr.rewards.clip import CLIP_H_PROCESSOR_HUB, TOKENIZER_FILES, CLIPSimilarityReward
from didr.rewards.preprocess import LetterboxPreprocess
from didr.rewards.text_cleaning import open_clip_clean

HPS_HUB = "xswu/HPSv2"
HPS_V21_FILE = "HPS_v2.1_compressed.pt"

#: open_clip's ViT-H-14 (model_configs/ViT-H-14.json: embed 1024; vision 32 x 1280, head width 80,
#: patch 14; text 24 x 1024, 16 heads, context 77, vocab 49408), as a transformers CLIPConfig
VIT_H_14 = {
    "projection_dim": 1024,
    "text_config": {
        "vocab_size": 49408, "hidden_size": 1024, "intermediate_size": 4096, "num_hidden_layers": 24,
        "num_attention_heads": 16, "max_position_embeddings": 77, "hidden_act": "gelu", "layer_norm_eps": 1e-5,
        "bos_token_id": 49406, "eos_token_id": 49407, "pad_token_id": 0,
    },
    "vision_config": {
        "hidden_size": 1280, "intermediate_size": 5120, "num_hidden_layers": 32, "num_attention_heads": 16,
        "image_size": 224, "patch_size": 14, "hidden_act": "gelu", "layer_norm_eps": 1e-5,
    },
}

# open_clip block names -> transformers CLIPEncoderLayer names (the fused in_proj is split below)
_BLOCK_RENAMES = {
    "ln_1": "layer_norm1", "ln_2": "layer_norm2", "mlp.c_fc": "mlp.fc1", "mlp.c_proj": "mlp.fc2", "attn.out_proj": "self_attn.out_proj",
}
_TOP_RENAMES = {
    "token_embedding.weight": "text_model.embeddings.token_embedding.weight",
    "positional_embedding": "text_model.embeddings.position_embedding.weight",
    "ln_final.weight": "text_model.final_layer_norm.weight",
    "ln_final.bias": "text_model.final_layer_norm.bias",
    "logit_scale": "logit_scale",
    "visual.class_embedding": "vision_model.embeddings.class_embedding",
    "visual.positional_embedding": "vision_model.embeddings.position_embedding.weight",
    "visual.conv1.weight": "vision_model.embeddings.patch_embedding.weight",
    "visual.ln_pre.weight": "vision_model.pre_layrnorm.weight",
    "visual.ln_pre.bias": "vision_model.pre_layrnorm.bias",
    "visual.ln_post.weight": "vision_model.post_layernorm.weight",
    "visual.ln_post.bias": "vision_model.post_layernorm.bias",
}
# open_clip stores projections as (in, out) matrices used as x @ W; nn.Linear wants (out, in)
_TRANSPOSED = {"text_projection": "text_projection.weight", "visual.proj": "visual_projection.weight"}
_BLOCK = re.compile(r"^(visual\.)?transformer\.resblocks\.(\d+)\.(.+)$")


def open_clip_to_transformers(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """Rename an open_clip CLIP state dict (ViT vision tower, built-in text tower) to ``transformers.CLIPModel``'s keys.

    Raises :class:`ModelLoadError` naming any key it does not know, so a checkpoint of another
    layout (a custom text tower, attention pooling) is refused rather than half-loaded.
    """
    out, unknown = {}, []
    for key, value in state.items():
        if key in _TOP_RENAMES:
            out[_TOP_RENAMES[key]] = value
        elif key in _TRANSPOSED:
            out[_TRANSPOSED[key]] = value.t().contiguous()
        elif m := _BLOCK.match(key):
            tower = "vision_model" if m.group(1) else "text_model"
            out.update(_map_block_param(f"{tower}.encoder.layers.{m.group(2)}", m.group(3), value, unknown, key))
        else:
            unknown.append(key)
    if unknown:
        raise ModelLoadError(f"unknown open_clip key(s) {', '.join(sorted(unknown)[:4])}{', ...' if len(unknown) > 4 else ''}")
    return out


def _map_block_param(prefix: str, name: str, value: Tensor, unknown: list, key: str) -> dict[str, Tensor]:
    if name in ("attn.in_proj_weight", "attn.in_proj_bias"):
        kind = name.rsplit("_", 1)[1]  # "weight" or "bias"
        q, k, v = value.chunk(3, dim=0)  # nn.MultiheadAttention stacks [q; k; v] along the output dim
        return {f"{prefix}.self_attn.{n}_proj.{kind}": t.contiguous() for n, t in zip("qkv", (q, k, v))}
    base, _, kind = name.rpartition(".")
    if base in _BLOCK_RENAMES:
        return {f"{prefix}.{_BLOCK_RENAMES[base]}.{kind}": value}
    unknown.append(key)
    return {}


class HPSv2Reward(CLIPSimilarityReward):
    """HPSv2.1: ``100 * cos(image, text)`` with the HPS-trained CLIP ViT-H-14, letterboxed images, cleaned prompts."""

    name = "hpsv2.1"
    typical_range = (25.0, 35.0)

    def __init__(self, model, tokenizer, *, scale: float = 100.0):
        size = int(model.config.vision_config.image_size)
        super().__init__(model, tokenizer, LetterboxPreprocess(size), scale=scale, clean_text=open_clip_clean)


def hps_config(config: str | os.PathLike | dict | None = None):
    """A ``CLIPConfig``: ViT-H-14 by default, else a dict, a config.json, or a folder holding one."""
    from transformers import CLIPConfig

    if config is None:
        config = VIT_H_14
    elif not isinstance(config, dict):
        path = resolve_file(config, ["config.json"], "HPSv2 model config")
        config = json.loads(path.read_text())
    return CLIPConfig(**{k: v for k, v in config.items() if k in ("projection_dim", "text_config", "vision_config", "logit_scale_init_value")})


def load_hpsv2(
    source: str | os.PathLike = HPS_HUB,
    *,
    filename: str = HPS_V21_FILE,
    config: str | os.PathLike | dict | None = None,
    tokenizer: str | os.PathLike | None = None,
    scale: float = 100.0,
    device: Any = None,
    dtype: torch.dtype | None = None,
) -> HPSv2Reward:
    """HPSv2.1 from the official checkpoint.

    ``source``: the checkpoint file, a folder holding ``filename``, or a hub repo (``xswu/HPSv2``).
    ``config``: the architecture, default ViT-H-14 (or the folder's config.json if it has one).
    ``tokenizer``: a CLIP tokenizer folder or hub id, default the folder if it holds one, else CLIP-H's.
    ``dtype``: the model's, float32 by default whatever the checkpoint stores (a float16 file is copied into it).
    """
    from transformers import AutoTokenizer, CLIPModel

    what = "HPSv2"
    path = resolve_file(source, [filename, filename.replace(".pt", ".safetensors")], f"{what} checkpoint")
    if config is None and has_files(source, "config.json"):
        config = source
    cfg = hps_config(config)
    model = empty_model(lambda: CLIPModel(cfg))
    load_strict(model, open_clip_to_transformers(load_state_dict(path, what)), what, path, assign=True)
    if tokenizer is None:
        tokenizer = source if has_files(source, *TOKENIZER_FILES) else CLIP_H_PROCESSOR_HUB
    tok = from_pretrained(AutoTokenizer, tokenizer, f"{what} tokenizer", weights=False)
    return HPSv2Reward(freeze(model, device, dtype), tok, scale=float(scale))
