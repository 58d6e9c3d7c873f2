"""Tiny random reward models saved in the official layouts, and the official preprocessing paths, for tests.

The open_clip and BLIP-ViT reference modules copy the official module structure (attribute
names, fused attention projections, LayerNorm eps) from open_clip's ``transformer.py``/``model.py``
and BLIP's ``vit.py``, so their ``state_dict()`` has the official key names and their forward
passes are the official computations; the mapped transformers models must match both.
"""

from __future__ import annotations

import json
from collections import OrderedDict
from pathlib import Path

import numpy as np
import torch
from torch import nn

from didr.rewards.heads import MLPHead
from didr.rewards.preprocess import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD
from didr.testing.tiny import save_char_tokenizer

CLIP_WIDTH, CLIP_HEADS, CLIP_LAYERS, CLIP_EMBED, PATCH = 32, 2, 2, 16, 32
BERT_WORDS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *"abcdefghijklmnopqrstuvwxyz", "cat", "dog", "photo", "of", "red", "blue", "astronaut", "coffee", "cup"]


def to_model_range(array) -> torch.Tensor:
    """(H, W, 3) uint8 array -> (1, 3, H, W) float in [-1, 1], the rewards' input convention."""
    return torch.from_numpy(np.array(array)).permute(2, 0, 1)[None].float() / 127.5 - 1


# ---------------------------------------------------------------- official preprocessing paths

def transformers_reference(pil) -> torch.Tensor:
    """transformers' CLIP image processor (PIL backend), as PickScore's and CLIPScore's official code runs it."""
    from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

    return torch.from_numpy(np.asarray(CLIPImageProcessorPil()(images=pil, return_tensors="np")["pixel_values"]))


def torchvision_reference(pil, size: int = 224) -> torch.Tensor:
    """torchvision's Resize(size, BICUBIC) + CenterCrop(size) + ToTensor + Normalize on a PIL image.

    torchvision itself does not import here; on PIL images its Resize calls ``PIL.Image.resize``
    with the size rule below, and CenterCrop rounds the offset (``int(round((h - size) / 2.0))``).
    """
    from PIL import Image

    w, h = pil.size
    new = (size, int(size * h / w)) if w <= h else (int(size * w / h), size)
    arr = np.asarray(pil.resize(new, Image.BICUBIC)).astype(np.float32) / 255
    top, left = int(round((arr.shape[0] - size) / 2.0)), int(round((arr.shape[1] - size) / 2.0))
    arr = (arr[top : top + size, left : left + size] - np.array(OPENAI_CLIP_MEAN)) / np.array(OPENAI_CLIP_STD)
    return torch.from_numpy(arr.astype(np.float32)).permute(2, 0, 1)[None]


def letterbox_cases(photos: dict) -> dict:
    """The photographs of ``data/hps_letterbox_golden.json``, under its names: landscape, square, portrait, small."""
    chelsea = photos["chelsea"]
    return {
        "astronaut 512x512": photos["astronaut"],
        "chelsea 300x451": chelsea,
        "coffee 400x600": photos["coffee"],
        "rocket 427x640": photos["rocket"],
        "chelsea portrait 451x300": np.ascontiguousarray(chelsea.transpose(1, 0, 2)),
        "chelsea crop 100x150": np.ascontiguousarray(chelsea[100:200, 150:300]),
    }


#: prompts and what open_clip's tokenizer makes of them before its BPE (``whitespace_clean(basic_clean(p)).lower()``),
#: printed by open_clip_torch 3.3.0 and hpsv2 1.2.0 (the same tokenizer.py) with ftfy 6.3.1
OPEN_CLIP_CLEANED = {
    "Van Gogh’s starry night": "van gogh's starry night",
    "“a quoted” cat": '"a quoted" cat',
    "salt &amp; pepper on a plate": "salt & pepper on a plate",
    "fish &amp;amp; chips": "fish & chips",
    "&lt;b&gt;bold&lt;/b&gt; letters": "<b>bold</b> letters",
    "ＦＵＬＬ－ＷＩＤＴＨ ｃａｔ ２０２４": "full-width cat 2024",
    "a ﬁne ﬂower ﬁeld": "a fine flower field",
    "  a   red\tcup \n\n of   coffee  ": "a red cup of coffee",
    "A PHOTO OF AN ASTRONAUT": "a photo of an astronaut",
    "cafÃ© au lait": "café au lait",
    "&amp;#39;": "'",
    "Ｔｅｓｔ\u3000ｉｎｇ": "test ing",
    "\u00a0nbsp\u2003em": "nbsp em",
    "e\u0301cole": "\u00e9cole",
    "x\x1cy": "xy",
}


# ---------------------------------------------------------------- tokenizers

def save_clip_tokenizer(folder: Path) -> int:
    """A character-level CLIP BPE tokenizer (no merges); returns its vocabulary size."""

    return save_char_tokenizer(folder)


def save_bert_vocab(folder: Path) -> int:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.txt").write_text("\n".join(BERT_WORDS) + "\n")
    return len(BERT_WORDS)


# ---------------------------------------------------------------- CLIP (PickScore, CLIPScore, aesthetic)

def tiny_clip_config(vocab_size: int, act: str = "gelu"):
    from transformers import CLIPConfig

    text = dict(vocab_size=vocab_size, hidden_size=CLIP_WIDTH, intermediate_size=4 * CLIP_WIDTH, num_hidden_layers=CLIP_LAYERS,
                num_attention_heads=CLIP_HEADS, max_position_embeddings=77, hidden_act=act,
                bos_token_id=vocab_size - 2, eos_token_id=vocab_size - 1, pad_token_id=vocab_size - 1)
    vision = dict(hidden_size=CLIP_WIDTH, intermediate_size=4 * CLIP_WIDTH, num_hidden_layers=CLIP_LAYERS, num_attention_heads=CLIP_HEADS,
                  image_size=224, patch_size=PATCH, hidden_act=act)
    return CLIPConfig(text_config=text, vision_config=vision, projection_dim=CLIP_EMBED)


def save_clip_folder(folder: Path, seed: int = 0, act: str = "gelu", processor: bool = True) -> Path:
    """A tiny transformers CLIP model folder with tokenizer and (optionally) image-processor config."""
    from transformers import CLIPModel
    from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

    vocab_size = save_clip_tokenizer(folder)
    torch.manual_seed(seed)
    CLIPModel(tiny_clip_config(vocab_size, act)).save_pretrained(folder)
    if processor:
        CLIPImageProcessorPil().save_pretrained(folder)
    return folder


# ---------------------------------------------------------------- open_clip layout (HPSv2)

class _ResidualAttentionBlock(nn.Module):
    """open_clip ``ResidualAttentionBlock`` (no layer scale, as in ViT-H-14)."""

    def __init__(self, d: int, heads: int):
        super().__init__()
        self.ln_1 = nn.LayerNorm(d)
        self.attn = nn.MultiheadAttention(d, heads)
        self.ln_2 = nn.LayerNorm(d)
        self.mlp = nn.Sequential(OrderedDict([("c_fc", nn.Linear(d, 4 * d)), ("gelu", nn.GELU()), ("c_proj", nn.Linear(4 * d, d))]))

    def forward(self, x, attn_mask=None):  # x: (L, N, D), as open_clip before batch_first
        y = self.ln_1(x)
        x = x + self.attn(y, y, y, need_weights=False, attn_mask=attn_mask)[0]
        return x + self.mlp(self.ln_2(x))


class _Transformer(nn.Module):
    def __init__(self, d: int, layers: int, heads: int):
        super().__init__()
        self.resblocks = nn.ModuleList(_ResidualAttentionBlock(d, heads) for _ in range(layers))

    def forward(self, x, attn_mask=None):
        for block in self.resblocks:
            x = block(x, attn_mask)
        return x


class _VisionTransformer(nn.Module):
    def __init__(self, image_size: int, patch: int, d: int, layers: int, heads: int, out: int):
        super().__init__()
        self.conv1 = nn.Conv2d(3, d, patch, patch, bias=False)
        self.class_embedding = nn.Parameter(torch.randn(d) * d**-0.5)
        self.positional_embedding = nn.Parameter(torch.randn((image_size // patch) ** 2 + 1, d) * d**-0.5)
        self.ln_pre = nn.LayerNorm(d)
        self.transformer = _Transformer(d, layers, heads)
        self.ln_post = nn.LayerNorm(d)
        self.proj = nn.Parameter(torch.randn(d, out) * d**-0.5)

    def forward(self, x):
        x = self.conv1(x).flatten(2).permute(0, 2, 1)
        x = torch.cat([self.class_embedding + torch.zeros(x.shape[0], 1, x.shape[-1]), x], dim=1) + self.positional_embedding
        x = self.transformer(self.ln_pre(x).permute(1, 0, 2)).permute(1, 0, 2)
        return self.ln_post(x[:, 0]) @ self.proj


class OpenClipReference(nn.Module):
    """open_clip's ``CLIP`` (ViT vision tower, built-in text tower) at tiny size."""

    def __init__(self, vocab_size: int, context: int = 77):
        super().__init__()
        d, out = CLIP_WIDTH, CLIP_EMBED
        self.visual = _VisionTransformer(224, PATCH, d, CLIP_LAYERS, CLIP_HEADS, out)
        self.transformer = _Transformer(d, CLIP_LAYERS, CLIP_HEADS)
        self.token_embedding = nn.Embedding(vocab_size, d)
        self.positional_embedding = nn.Parameter(torch.randn(context, d) * 0.01)
        self.ln_final = nn.LayerNorm(d)
        self.text_projection = nn.Parameter(torch.randn(d, out) * d**-0.5)
        self.logit_scale = nn.Parameter(torch.tensor(2.6592))
        self.register_buffer("attn_mask", torch.full((context, context), float("-inf")).triu_(1), persistent=False)
        for p in self.parameters():  # non-trivial LayerNorm affine and biases, so a misplaced one shows
            if p.ndim == 1:
                p.data.add_(0.1 * torch.randn_like(p))

    def encode_image(self, pixels):
        return self.visual(pixels)

    def encode_text(self, text):
        x = self.token_embedding(text) + self.positional_embedding
        x = self.transformer(x.permute(1, 0, 2), attn_mask=self.attn_mask).permute(1, 0, 2)
        x = self.ln_final(x)
        return x[torch.arange(x.shape[0]), text.argmax(dim=-1)] @ self.text_projection


def tiny_hps_config(vocab_size: int) -> dict:
    """The tiny open_clip model above as a transformers CLIPConfig dict (GELU, eps 1e-5)."""
    cfg = tiny_clip_config(vocab_size).to_dict()
    return {k: cfg[k] for k in ("projection_dim", "text_config", "vision_config")}


# ---------------------------------------------------------------- BLIP / ImageReward layout

class _TimmAttention(nn.Module):
    def __init__(self, d: int, heads: int):
        super().__init__()
        self.heads, self.qkv, self.proj = heads, nn.Linear(d, 3 * d), nn.Linear(d, d)

    def forward(self, x):
        b, n, c = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        attn = ((q @ k.transpose(-2, -1)) * (c // self.heads) ** -0.5).softmax(-1)
        return self.proj((attn @ v).transpose(1, 2).reshape(b, n, c))


class _TimmMlp(nn.Module):
    def __init__(self, d: int, hidden: int):
        super().__init__()
        self.fc1, self.act, self.fc2 = nn.Linear(d, hidden), nn.GELU(), nn.Linear(hidden, d)

    def forward(self, x):
        return self.fc2(self.act(self.fc1(x)))


class _TimmBlock(nn.Module):
    def __init__(self, d: int, heads: int):
        super().__init__()
        self.norm1, self.attn = nn.LayerNorm(d, eps=1e-6), _TimmAttention(d, heads)
        self.norm2, self.mlp = nn.LayerNorm(d, eps=1e-6), _TimmMlp(d, 4 * d)

    def forward(self, x):
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class _PatchEmbed(nn.Module):
    def __init__(self, patch: int, d: int):
        super().__init__()
        self.proj = nn.Conv2d(3, d, patch, patch)


class BlipViTReference(nn.Module):
    """BLIP's ``VisionTransformer`` (vit.py) at tiny size: 64-wide heads, LayerNorm eps 1e-6."""

    def __init__(self, d: int = 128, layers: int = 2, patch: int = PATCH, image_size: int = 224):
        super().__init__()
        self.patch_embed = _PatchEmbed(patch, d)
        self.cls_token = nn.Parameter(torch.randn(1, 1, d) * 0.02)
        self.pos_embed = nn.Parameter(torch.randn(1, (image_size // patch) ** 2 + 1, d) * 0.02)
        self.blocks = nn.ModuleList(_TimmBlock(d, d // 64) for _ in range(layers))
        self.norm = nn.LayerNorm(d, eps=1e-6)
        for p in self.parameters():
            if p.ndim == 1:
                p.data.add_(0.1 * torch.randn_like(p))

    def forward(self, x):
        x = self.patch_embed.proj(x).flatten(2).transpose(1, 2)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1) + self.pos_embed
        for block in self.blocks:
            x = block(x)
        return self.norm(x)


def med_config(vocab_size: int, hidden: int = 32) -> dict:
    """BLIP's med_config.json at tiny size (same fields as ImageReward's)."""
    return {"architectures": ["BertModel"], "attention_probs_dropout_prob": 0.1, "hidden_act": "gelu", "hidden_dropout_prob": 0.1,
            "hidden_size": hidden, "initializer_range": 0.02, "intermediate_size": 2 * hidden, "layer_norm_eps": 1e-12,
            "max_position_embeddings": 64, "model_type": "bert", "num_attention_heads": 2, "num_hidden_layers": 2,
            "pad_token_id": 0, "type_vocab_size": 2, "vocab_size": vocab_size, "encoder_width": 128, "add_cross_attention": True}


def med_text_encoder_state(cfg: dict) -> dict[str, torch.Tensor]:
    """Random tensors under the keys and shapes of med.py's ``BertModel(add_pooling_layer=False)``."""
    h, inter, enc = cfg["hidden_size"], cfg["intermediate_size"], cfg["encoder_width"]
    shapes = {
        "embeddings.word_embeddings.weight": (cfg["vocab_size"], h),
        "embeddings.position_embeddings.weight": (cfg["max_position_embeddings"], h),
        "embeddings.LayerNorm.weight": (h,), "embeddings.LayerNorm.bias": (h,),
    }
    for i in range(cfg["num_hidden_layers"]):
        p = f"encoder.layer.{i}."
        for att, kv_width in (("attention", h), ("crossattention", enc)):
            shapes.update({
                f"{p}{att}.self.query.weight": (h, h), f"{p}{att}.self.query.bias": (h,),
                f"{p}{att}.self.key.weight": (h, kv_width), f"{p}{att}.self.key.bias": (h,),
                f"{p}{att}.self.value.weight": (h, kv_width), f"{p}{att}.self.value.bias": (h,),
                f"{p}{att}.output.dense.weight": (h, h), f"{p}{att}.output.dense.bias": (h,),
                f"{p}{att}.output.LayerNorm.weight": (h,), f"{p}{att}.output.LayerNorm.bias": (h,),
            })
        shapes.update({
            f"{p}intermediate.dense.weight": (inter, h), f"{p}intermediate.dense.bias": (inter,),
            f"{p}output.dense.weight": (h, inter), f"{p}output.dense.bias": (h,),
            f"{p}output.LayerNorm.weight": (h,), f"{p}output.LayerNorm.bias": (h,),
        })
    state = {k: (1.0 if "LayerNorm.weight" in k else 0.0) + 0.05 * torch.randn(s) for k, s in shapes.items()}
    # med.py registers position_ids as a persistent buffer, so it is in the official checkpoint
    state["embeddings.position_ids"] = torch.arange(cfg["max_position_embeddings"]).expand(1, -1).clone()
    return state


def official_image_reward_state(vocab_size: int, seed: int = 0) -> tuple[dict[str, torch.Tensor], dict, BlipViTReference]:
    """A state dict shaped like ``ImageReward.pt`` (ImageReward.py's ``blip`` and ``mlp``), its med config and ViT."""
    torch.manual_seed(seed)
    cfg = med_config(vocab_size)
    vit = BlipViTReference(d=cfg["encoder_width"])
    head = MLPHead(cfg["hidden_size"])
    for p in head.parameters():  # the official init is tiny; larger weights make score differences visible
        p.data.normal_(0, 0.1)
    state = {f"blip.visual_encoder.{k}": v for k, v in vit.state_dict().items()}
    state.update({f"blip.text_encoder.{k}": v for k, v in med_text_encoder_state(cfg).items()})
    state.update({"blip.vision_proj.weight": torch.randn(16, cfg["encoder_width"]), "blip.vision_proj.bias": torch.zeros(16),
                  "blip.text_proj.weight": torch.randn(16, cfg["hidden_size"]), "blip.text_proj.bias": torch.zeros(16)})
    state.update({f"mlp.{k}": v for k, v in head.state_dict().items()})
    return state, cfg, vit


def save_image_reward_folder(folder: Path, seed: int = 0) -> tuple[Path, BlipViTReference]:
    """``ImageReward.pt`` + ``med_config.json`` + a BERT ``vocab.txt``, as the official hub repo plus tokenizer."""
    n_words = save_bert_vocab(folder)
    state, cfg, vit = official_image_reward_state(n_words + 2, seed)  # BLIP adds [DEC] and [ENC]
    torch.save(state, folder / "ImageReward.pt")
    (folder / "med_config.json").write_text(json.dumps(cfg))
    return folder, vit


def save_hps_folder(folder: Path, seed: int = 0) -> tuple[Path, nn.Module]:
    """HPSv2's file name and ``{"state_dict": ...}`` layout from an open_clip-layout module, a tokenizer
    and the tiny architecture's config.json; returns (folder, the reference module)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    vocab = save_clip_tokenizer(folder)
    torch.manual_seed(seed)
    reference = OpenClipReference(vocab).eval()
    torch.save({"epoch": 1, "state_dict": reference.state_dict()}, folder / "HPS_v2.1_compressed.pt")
    (folder / "config.json").write_text(json.dumps(tiny_hps_config(vocab)))
    return folder, reference


def save_aesthetic_folder(folder: Path, seed: int = 1) -> Path:
    """An OpenAI-CLIP-like tiny model (quick GELU) plus a head file under the official name."""
    folder = save_clip_folder(Path(folder), seed=seed, act="quick_gelu")
    torch.manual_seed(seed + 1)
    head = MLPHead(16)
    for p in head.parameters():
        p.data.normal_(0, 0.3)
    torch.save(head.state_dict(), folder / "sac+logos+ava1-l14-linearMSE.pth")
    return folder
