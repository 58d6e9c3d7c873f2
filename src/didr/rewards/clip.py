"""CLIP-based rewards: PickScore, CLIPScore and the LAION aesthetic predictor (HPSv2.1 is in :mod:`hps`).

All of them take images (B, 3, H, W) in [-1, 1] and run the model's preprocessing in torch
(:mod:`didr.rewards.preprocess`), so their scores are differentiable with respect to the pixels.
Their prompts go to the official (transformers) tokenizers as they are, as the official code
passes them (:mod:`didr.rewards.text_cleaning`). The loaders build float32 models unless given ``dtype``.

- PickScore (Kirstain et al. 2023, yuvalkirstain/PickScore): a fine-tuned CLIP ViT-H/14;
  score = logit_scale.exp() * cos(image, text), about 18-24. Official preprocessing: the
  ``laion/CLIP-ViT-H-14-laion2B-s32B-b79K`` processor.
- CLIPScore: ``scale * max(cos(image, text), 0)`` with a CLIP model, default
  openai/clip-vit-large-patch14 and scale 100 (torchmetrics' convention; Hessel et al. 2021 use
  ViT-B/32 and 2.5).
- Aesthetic (christophschuhmann/improved-aesthetic-predictor): an MLP on the L2-normalised image
  embedding of OpenAI CLIP ViT-L/14, about 4-7 (the "sac+logos+ava1-l14-linearMSE" head).
  Official preprocessing: OpenAI CLIP's torchvision pipeline (``clip.load``).
"""

from __future__ import annotations

import json
import os
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from didr.errors import ModelLoadError
from didr.hub import freeze, from_pretrained, has_files, load_state_dict, load_strict, resolve_file
from didr.rewards.base import FrozenReward, prompt_list
from didr.rewards.heads import MLPHead
from didr.rewards.preprocess import ImagePreprocess, preprocess_from_config, torchvision_clip_preprocess

PICKSCORE_HUB = "yuvalkirstain/PickScore_v1"
#: PickScore's official processor (tokenizer and image preprocessing), also HPSv2's tokenizer
CLIP_H_PROCESSOR_HUB = "laion/CLIP-ViT-H-14-laion2B-s32B-b79K"
CLIP_L_HUB = "openai/clip-vit-large-patch14"
AESTHETIC_HEAD_FILES = ("sac+logos+ava1-l14-linearMSE.pth", "aesthetic_head.safetensors", "aesthetic_head.pth")
TOKENIZER_FILES = ("tokenizer.json", "vocab.json")


class CLIPSimilarityReward(FrozenReward):
    """``scale * cos(image embedding, text embedding)``, optionally clamped below; ``scale=None`` uses CLIP's logit scale.

    ``preprocess``: images (B, 3, H, W) in [-1, 1] to ``pixel_values``; ``clean_text``: what the
    official tokenizer does to a prompt before its BPE, if anything (:mod:`didr.rewards.text_cleaning`).
    """

    def __init__(self, model, tokenizer, preprocess: Callable[[Tensor], Tensor], *, scale: float | None = None,
                 clamp_min: float | None = None, clean_text: Callable[[str], str] | None = None):
        super().__init__()
        self.model, self.tokenizer, self.preprocess = model, tokenizer, preprocess
        self.scale, self.clamp_min, self.clean_text = scale, clamp_min, clean_text
        self.max_length = int(model.config.text_config.max_position_embeddings)

    @property
    def device(self) -> torch.device:
        return self.model.logit_scale.device

    def encode_images(self, images: Tensor) -> Tensor:
        """Unit-norm image embeddings (B, D), differentiable with respect to ``images``."""
        pixels = self.preprocess(images.to(self.device)).to(self.model.dtype)
        pooled = self.model.vision_model(pixel_values=pixels).pooler_output
        return F.normalize(self.model.visual_projection(pooled).float(), dim=-1)

    def tokenize(self, prompts: list[str]):
        """``input_ids`` and ``attention_mask`` of the prompts, cleaned first where the official tokenizer cleans them."""
        if self.clean_text is not None:
            prompts = [self.clean_text(p) for p in prompts]
        return self.tokenizer(prompts, padding=True, truncation=True, max_length=self.max_length, return_tensors="pt")

    @torch.no_grad()
    def encode_prompts(self, prompts: list[str]) -> Tensor:
        """Unit-norm text embeddings (B, D); prompts get no gradient."""
        tokens = self.tokenize(prompts).to(self.device)
        pooled = self.model.text_model(input_ids=tokens["input_ids"], attention_mask=tokens["attention_mask"]).pooler_output
        return F.normalize(self.model.text_projection(pooled).float(), dim=-1)

    def forward(self, images: Tensor, prompts: Any = None) -> Tensor:
        texts = prompt_list(prompts, images.shape[0], self.name)
        cos = (self.encode_images(images) * self.encode_prompts(texts)).sum(-1)
        if self.clamp_min is not None:
            cos = cos.clamp_min(self.clamp_min)
        scale = self.model.logit_scale.exp().float() if self.scale is None else self.scale
        return scale * cos


class PickScoreReward(CLIPSimilarityReward):
    """PickScore: CLIP ViT-H/14 fine-tuned on Pick-a-Pic, ``logit_scale.exp() * cos``."""

    name = "pickscore"
    typical_range = (18.0, 24.0)


class CLIPScoreReward(CLIPSimilarityReward):
    """CLIPScore: ``scale * max(cos, 0)``."""

    name = "clipscore"
    typical_range = (15.0, 40.0)


class AestheticReward(FrozenReward):
    """LAION aesthetic predictor: MLP on the unit-norm CLIP ViT-L/14 image embedding; prompts are ignored."""

    name = "aesthetic"
    typical_range = (4.0, 7.0)

    def __init__(self, vision_model, head: MLPHead, preprocess: ImagePreprocess):
        super().__init__()
        self.vision_model, self.head, self.preprocess = vision_model, head, preprocess

    def forward(self, images: Tensor, prompts: Any = None) -> Tensor:
        device = self.head.layers[0].weight.device
        pixels = self.preprocess(images.to(device)).to(self.vision_model.dtype)
        embeds = self.vision_model(pixel_values=pixels).image_embeds
        # the head was trained on L2-normalised embeddings (simple_inference.py's normalized())
        return self.head(F.normalize(embeds, dim=-1).to(self.head.layers[0].weight.dtype)).squeeze(-1).float()


def load_processor(source: str | os.PathLike, what: str) -> tuple[Any, ImagePreprocess]:
    """Tokenizer and torch image preprocessing from a transformers processor folder or hub id."""
    from transformers import AutoTokenizer

    tokenizer = from_pretrained(AutoTokenizer, source, f"{what} tokenizer", weights=False)
    config_path = resolve_file(source, ["preprocessor_config.json"], f"{what} image processor")
    return tokenizer, preprocess_from_config(json.loads(config_path.read_text()))


def _clip_model(source: str | os.PathLike, what: str):
    from transformers import CLIPModel

    return from_pretrained(CLIPModel, source, what)


def _processor_source(source: str | os.PathLike, processor: str | os.PathLike | None, default: str) -> str | os.PathLike:
    """The processor argument if given, else the model folder if it holds a processor, else the official one."""
    if processor is not None:
        return processor
    return source if has_files(source, "preprocessor_config.json") else default


def load_pickscore(
    source: str | os.PathLike = PICKSCORE_HUB,
    *,
    processor: str | os.PathLike | None = None,
    device: Any = None,
    dtype: torch.dtype | None = None,
) -> PickScoreReward:
    """PickScore from a model folder or hub id; ``processor`` defaults to the folder if it has one, else CLIP-H's."""
    what = f"PickScore {source}"
    model = freeze(_clip_model(source, what), device, dtype)
    tokenizer, preprocess = load_processor(_processor_source(source, processor, CLIP_H_PROCESSOR_HUB), what)
    return PickScoreReward(model, tokenizer, preprocess)


def load_clipscore(
    source: str | os.PathLike = CLIP_L_HUB,
    *,
    processor: str | os.PathLike | None = None,
    scale: float = 100.0,
    device: Any = None,
    dtype: torch.dtype | None = None,
) -> CLIPScoreReward:
    """CLIPScore with any transformers CLIP model; its processor is taken from the same place unless given."""
    what = f"CLIPScore {source}"
    model = freeze(_clip_model(source, what), device, dtype)
    tokenizer, preprocess = load_processor(processor if processor is not None else source, what)
    return CLIPScoreReward(model, tokenizer, preprocess, scale=float(scale), clamp_min=0.0)


def clip_vision_config(source: str | os.PathLike, what: str):
    """The vision tower's config, with the projection width that a full CLIP config keeps at its top level."""
    from transformers import CLIPConfig

    config = from_pretrained(CLIPConfig, source, f"{what} CLIP config", weights=False)
    vision = config.vision_config
    vision.projection_dim = config.projection_dim
    return vision


def load_aesthetic(
    source: str | os.PathLike,
    *,
    clip: str | os.PathLike | None = None,
    device: Any = None,
    dtype: torch.dtype | None = None,
) -> AestheticReward:
    """The LAION aesthetic predictor.

    ``source``: the head checkpoint (``sac+logos+ava1-l14-linearMSE.pth``) or a folder holding it;
    ``clip``: the CLIP ViT-L/14 model, default the folder itself when it holds a transformers model,
    else ``openai/clip-vit-large-patch14``.
    """
    from transformers import CLIPVisionModelWithProjection

    what = "aesthetic predictor"
    head_path = resolve_file(source, AESTHETIC_HEAD_FILES, f"{what} head")
    state = load_state_dict(head_path, f"{what} head")
    if "layers.0.weight" not in state:
        raise ModelLoadError(f"{what} head: {head_path} has no layers.0.weight; keys: {', '.join(sorted(state)[:4])}")
    head = MLPHead(state["layers.0.weight"].shape[1])
    load_strict(head, state, f"{what} head", head_path)
    clip = clip if clip is not None else (source if has_files(source, "config.json") else CLIP_L_HUB)
    vision = from_pretrained(CLIPVisionModelWithProjection, clip, f"{what} CLIP model", config=clip_vision_config(clip, what))
    preprocess = torchvision_clip_preprocess(vision.config.image_size)
    return freeze(AestheticReward(vision, head, preprocess), device, dtype)
