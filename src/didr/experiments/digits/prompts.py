"""The digits' prompts: class indices or text (sentences naming the digit and its stroke weight,
embedded once by a sentence encoder), and the conditioning batches built from them."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from didr.data.digits import STYLE_NAMES, DigitPrompts, digit_prompts
from didr.experiments.config import DigitsConfig
from didr.models.text import PromptSet, SentenceEncoder, encode_cached, minilm_path


class ClassPrompts:
    """Class-index conditioning: prompt i is digit i, the null prompt is index ``n_classes``."""

    kind = "class"

    def __init__(self, n_classes: int):
        self.n_classes = n_classes

    def count(self, split: str = "seen") -> int:
        return self.n_classes

    def batch(self, index: Tensor, split: str = "seen") -> Tensor:
        return index.long()

    def digits(self, cond: Tensor) -> Tensor:
        return cond

    def for_images(self, labels: Tensor, styles: Tensor, gen: torch.Generator) -> Tensor:
        """Prompt indices for real images (the reference's DSM)."""
        return labels

    def balanced(self, n: int, split: str, gen: torch.Generator) -> Tensor:
        return torch.arange(n) % self.n_classes

    def null_cond(self, cond: Tensor) -> Tensor:
        return torch.full_like(cond, self.n_classes)


class TextPrompts:
    """Text conditioning: the prompt sets (seen phrasings for training, unseen ones held out) with
    their cached sentence embeddings, batched by :class:`didr.models.text.PromptSet` as dicts
    ``{"prompts", "text_embeds", "digit"}``; the empty prompt is the null condition (M4). ``digit``
    is the digit the words name: the prompt reward reads it, the network never does."""

    kind = "text"

    def __init__(self, sets: dict[str, PromptSet], index: dict[str, DigitPrompts]):
        self.sets, self.index = sets, index

    def count(self, split: str = "seen") -> int:
        return len(self.sets[split])

    def batch(self, index: Tensor, split: str = "seen") -> dict:
        return self.sets[split].batch(index.tolist())

    def digits(self, cond: dict) -> Tensor:
        return cond["digit"]

    def pick(self, digits: Tensor, styles: Tensor, split: str, gen: torch.Generator) -> Tensor:
        """A random phrasing of each (digit, style)."""
        idx = self.index[split]
        out = torch.empty(len(digits), dtype=torch.long)
        for i, (d, st) in enumerate(zip(digits.tolist(), styles.tolist())):
            options = idx.matching(d, st)
            out[i] = options[torch.randint(0, len(options), (1,), generator=gen)]
        return out

    def for_images(self, labels: Tensor, styles: Tensor, gen: torch.Generator) -> Tensor:
        return self.pick(labels, styles, "seen", gen)

    def balanced(self, n: int, split: str, gen: torch.Generator) -> Tensor:
        """Digits 0..9 in turn (one class per grid column), styles thin / plain / bold in turn by row."""
        i = torch.arange(n)
        return self.pick(i % 10, (i // 10) % len(STYLE_NAMES), split, gen)

    def null_cond(self, cond: dict) -> dict:
        return self.sets["seen"].null_cond(cond)


def text_prompts(cfg: DigitsConfig, n_classes: int, cache_dir: Path | None) -> TextPrompts:
    """Encode every seen and unseen phrasing and the empty prompt once (cached under ``cache_dir``)."""
    path = minilm_path() if cfg.text_encoder == "minilm" else Path(cfg.text_encoder)
    encoder = _Lazy(lambda: SentenceEncoder.from_pretrained(path))
    index = {split: digit_prompts(split, n_classes) for split in ("seen", "unseen")}
    texts = index["seen"].texts + index["unseen"].texts + [""]
    rows = encode_cached(encoder, f"sentence:{path}", texts, cache_dir, batch=64)
    null = {**rows[-1], "digit": torch.tensor(-1)}
    sets, lo = {}, 0
    for split in ("seen", "unseen"):
        n = len(index[split].texts)
        rows_split = [{**r, "digit": d} for r, d in zip(rows[lo : lo + n], index[split].digit)]
        sets[split] = PromptSet(index[split].texts, rows_split, null)
        lo += n
    return TextPrompts(sets, index)


class _Lazy:
    """Builds the encoder on first use, so a run whose embeddings are cached never loads it."""

    def __init__(self, build):
        self.build, self.value = build, None

    def __call__(self, prompts):
        if self.value is None:
            self.value = self.build()
        return self.value(prompts)


def split_cond(cond: Any, size: int) -> list[Any]:
    """A conditioning batch (tensor, or dict of tensors and lists) in chunks of ``size`` rows."""
    n = len(cond) if isinstance(cond, Tensor) else len(next(iter(cond.values())))
    return [rows_of(cond, lo, lo + size) for lo in range(0, n, size)]


def rows_of(cond: Any, lo: int, hi: int) -> Any:
    """Rows lo:hi of a conditioning batch (a tensor, or a dict of tensors and lists)."""
    return cond[lo:hi] if isinstance(cond, Tensor) else {k: v[lo:hi] for k, v in cond.items()}


def where_null(drop: Tensor, null: Any, cond: Any) -> Any:
    """Rows of ``null`` where ``drop``, else of ``cond`` (tensors, or dicts of tensors and lists)."""
    if isinstance(cond, Tensor):
        return torch.where(drop.reshape(-1, *[1] * (cond.ndim - 1)), null, cond)
    if isinstance(cond, dict):
        return {k: where_null(drop, null[k], v) for k, v in cond.items()}
    return [n if d else c for n, c, d in zip(null, cond, drop.tolist())]
