"""SDXL, Z-Image and PickScore's CLIP ViT-H/14 at their published sizes, with random weights.

The published configurations ship as data in ``didr/testing/configs/`` (each file's source is in
``didr/testing/configs/SOURCES.md``); :func:`published_config` reads them. The builders save complete
pipeline folders in the real layouts, so a run loads them through the same ``from_pretrained``
paths as released weights (``backbone.pretrained: FOLDER``, ``reward: pickscore:FOLDER``):

- :func:`save_sdxl_pipeline`: SDXL base 1.0's UNet, VAE and scheduler;
- :func:`save_zimage_pipeline`: Z-Image's transformer (full width; ``n_layers`` may cut its
  30 main blocks, ``n_refiner_layers`` its refiners' 2), its Flux-style VAE and scheduler;
- :func:`save_clip_h`: CLIP ViT-H/14 as PickScore ships it (a transformers ``CLIPModel``).

The text encoders keep their published widths, so the embeddings have the shapes the networks
expect, but only ``text_layers`` blocks and a character-level vocabulary: they run once to fill
the embedding cache and are then dropped, so their depth changes nothing that is measured.

"""

from __future__ import annotations

import contextlib
import json
import shutil
from importlib import resources
from pathlib import Path

import torch

from didr.testing.tiny import QWEN_CHAT_TEMPLATE, save_char_tokenizer

CONFIGS = ("sdxl_unet", "sdxl_vae", "sdxl_scheduler", "sdxl_text_encoder", "sdxl_text_encoder_2",
           "zimage_transformer", "zimage_vae", "zimage_scheduler", "zimage_text_encoder", "clip_vit_h_14")
#: diffusers writes one safetensors file per shard; small shards bound the copy it makes while saving
SHARD = "1GB"


def published_config(name: str) -> dict:
    """The published configuration ``name`` (one of :data:`CONFIGS`), as a fresh dict."""
    if name not in CONFIGS:
        raise KeyError(f"no published config {name!r}; choose one of {', '.join(CONFIGS)}")
    return json.loads(resources.files("didr.testing").joinpath("configs", f"{name}.json").read_text())


def diffusers_kwargs(config: dict) -> dict:
    """A diffusers config without its bookkeeping keys (``_class_name``, ``_diffusers_version``)."""
    return {k: v for k, v in config.items() if not k.startswith("_")}


@contextlib.contextmanager
def default_dtype(dtype: torch.dtype):
    """Build modules directly in ``dtype`` (a 6 B network never exists in float32 on the way)."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(previous)


def sdxl_unet(dtype: torch.dtype = torch.float32, **overrides):
    from diffusers import UNet2DConditionModel

    with default_dtype(dtype):
        return UNet2DConditionModel(**{**diffusers_kwargs(published_config("sdxl_unet")), **overrides})


def zimage_transformer(dtype: torch.dtype = torch.float32, n_layers: int | None = None, n_refiner_layers: int | None = None, **overrides):
    """Z-Image's DiT at full width; ``n_layers`` main blocks instead of the published 30, and
    ``n_refiner_layers`` blocks in each refiner instead of 2."""
    from diffusers import ZImageTransformer2DModel

    cfg = diffusers_kwargs(published_config("zimage_transformer"))
    if n_layers is not None:
        cfg["n_layers"] = n_layers
    if n_refiner_layers is not None:
        cfg["n_refiner_layers"] = n_refiner_layers
    with default_dtype(dtype):
        return ZImageTransformer2DModel(**{**cfg, **overrides})


def vae(kind: str, dtype: torch.dtype = torch.float32):
    from diffusers import AutoencoderKL

    with default_dtype(dtype):
        return AutoencoderKL(**diffusers_kwargs(published_config(f"{kind}_vae")))


def clip_h(dtype: torch.dtype = torch.float32, vocab: int | None = None):
    """PickScore's CLIP ViT-H/14; ``vocab`` replaces the text vocabulary (for a character-level tokenizer)."""
    from transformers import CLIPConfig, CLIPModel

    cfg = published_config("clip_vit_h_14")
    if vocab is not None:
        cfg["text_config"].update(vocab_size=vocab, bos_token_id=vocab - 2, eos_token_id=vocab - 1, pad_token_id=vocab - 1)
    with default_dtype(dtype):
        return CLIPModel(CLIPConfig(text_config=cfg["text_config"], vision_config=cfg["vision_config"],
                                    projection_dim=cfg["projection_dim"], logit_scale_init_value=cfg["logit_scale_init_value"]))


def _clip_text(name: str, vocab: int, layers: int, dtype: torch.dtype):
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    cfg = {k: v for k, v in published_config(name).items() if k not in ("architectures", "model_type")}
    cfg.update(vocab_size=vocab, num_hidden_layers=layers, bos_token_id=vocab - 2, eos_token_id=vocab - 1, pad_token_id=vocab - 1)
    cls = CLIPTextModelWithProjection if name.endswith("_2") else CLIPTextModel
    with default_dtype(dtype):
        return cls(CLIPTextConfig(**cfg))


def save_sdxl_pipeline(folder: Path, *, dtype: torch.dtype = torch.float32, text_layers: int = 1, seed: int = 0, device: str = "cpu") -> Path:
    """A ``StableDiffusionXLPipeline`` folder: SDXL base 1.0's UNet, VAE and scheduler, random weights
    (initialised on ``device``: a GPU draws billions of them in seconds)."""
    from diffusers import EulerDiscreteScheduler, StableDiffusionXLPipeline
    from transformers import CLIPTokenizer

    folder = Path(folder)
    vocab = save_char_tokenizer(folder / "_tok")
    tok = CLIPTokenizer.from_pretrained(folder / "_tok")
    torch.manual_seed(seed)
    with torch.device(device):
        pipe = StableDiffusionXLPipeline(
            vae=vae("sdxl", dtype), text_encoder=_clip_text("sdxl_text_encoder", vocab, text_layers, dtype),
            text_encoder_2=_clip_text("sdxl_text_encoder_2", vocab, text_layers, dtype), tokenizer=tok, tokenizer_2=tok,
            unet=sdxl_unet(dtype), scheduler=EulerDiscreteScheduler.from_config(published_config("sdxl_scheduler")),
        )
    pipe.save_pretrained(folder, max_shard_size=SHARD)
    shutil.rmtree(folder / "_tok")
    return folder


def save_zimage_pipeline(folder: Path, *, dtype: torch.dtype = torch.float32, n_layers: int | None = None,
                         n_refiner_layers: int | None = None, text_layers: int = 1,
                         seed: int = 0, device: str = "cpu") -> Path:
    """A ``ZImagePipeline`` folder: Z-Image's transformer (``n_layers`` main blocks), VAE and scheduler, random weights."""
    from diffusers import FlowMatchEulerDiscreteScheduler, ZImagePipeline
    from transformers import CLIPTokenizer, Qwen3Config, Qwen3Model

    folder = Path(folder)
    vocab = save_char_tokenizer(folder / "_tok", max_length=512)
    tokenizer = CLIPTokenizer.from_pretrained(folder / "_tok")
    tokenizer.chat_template = QWEN_CHAT_TEMPLATE
    text_cfg = {k: v for k, v in published_config("zimage_text_encoder").items() if k not in ("architectures", "model_type")}
    text_cfg.update(vocab_size=vocab, num_hidden_layers=text_layers)
    torch.manual_seed(seed)
    with torch.device(device), default_dtype(dtype):
        text = Qwen3Model(Qwen3Config(**text_cfg))
    with torch.device(device):
        pipe = ZImagePipeline(scheduler=FlowMatchEulerDiscreteScheduler.from_config(published_config("zimage_scheduler")),
                              vae=vae("zimage", dtype), text_encoder=text, tokenizer=tokenizer,
                              transformer=zimage_transformer(dtype, n_layers, n_refiner_layers))
    pipe.save_pretrained(folder, max_shard_size=SHARD)
    shutil.rmtree(folder / "_tok")
    return folder


def save_clip_h(folder: Path, *, dtype: torch.dtype = torch.float32, seed: int = 0, device: str = "cpu") -> Path:
    """A transformers CLIP ViT-H/14 folder with tokenizer and image processor (``pickscore:FOLDER``)."""
    from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

    folder = Path(folder)
    vocab = save_char_tokenizer(folder)
    torch.manual_seed(seed)
    with torch.device(device):
        model = clip_h(dtype, vocab)
    model.save_pretrained(folder, max_shard_size=SHARD)
    CLIPImageProcessorPil().save_pretrained(folder)  # CLIP's 224 px resize, crop and normalisation
    return folder


SAVERS = {"sdxl": save_sdxl_pipeline, "zimage": save_zimage_pipeline, "clip-h": save_clip_h}
