"""Scoring a folder of images against their prompts with any set of rewards (``didr score``).

    didr score samples/ -r pickscore:/models/PickScore_v1 --prompts prompts.txt -o scores.csv
    didr score samples/ -r hpsv2:/models/HPS_v2.1_compressed.pt -r aesthetic:/models/aesthetic -o scores.json

Prompts come from ``--prompts FILE``: matched to the images by name (.json: ``{"file.png":
"prompt"}``; .json/.jsonl/.csv: records with ``file`` and ``prompt``), or else a prompt set in any
format :mod:`didr.data.prompt_sets` reads (.txt, .jsonl, .json, .csv, .tsv, .parquet, the
benchmarks' layouts), one prompt per image in sorted file order, or one prompt for all. Otherwise
they come from ``--prompt TEXT`` for every image, or else from a ``NAME.txt`` next to each image. Rewards that ignore prompts (the aesthetic score) need none. The output is
one row per image (CSV) or rows plus a summary (JSON); a summary table is printed either way.

The same scoring is available to Python (benchmarks use it) as :func:`score_images`.
"""

from __future__ import annotations

import csv
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import numpy as np
import torch
from torch import Tensor

from didr.data.prompt_sets import load_prompt_set
from didr.errors import ConfigError, DidrError
from didr.rewards.base import RewardInfo, call_reward, reward_info
from didr.rewards.registry import load_reward

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")


@dataclass
class ScoreResult:
    """Per-image scores of each reward, with the rewards' metadata."""

    files: list[str]
    prompts: list[str | None]
    scores: dict[str, list[float]] = field(default_factory=dict)
    info: dict[str, RewardInfo] = field(default_factory=dict)

    def summary(self) -> dict[str, dict[str, float]]:
        """Mean, standard deviation, min and max of each reward over the images."""
        out = {}
        for name, values in self.scores.items():
            v = np.asarray(values, dtype=np.float64)
            out[name] = {"mean": float(v.mean()), "std": float(v.std()), "min": float(v.min()), "max": float(v.max()), "n": int(v.size)}
        return out

    def rows(self) -> list[dict[str, Any]]:
        return [
            {"file": f, "prompt": p if p is not None else "", **{n: s[i] for n, s in self.scores.items()}}
            for i, (f, p) in enumerate(zip(self.files, self.prompts))
        ]

    def save(self, path: str | Path) -> Path:
        """Write ``.csv`` (one row per image) or ``.json`` (rewards, summary and rows)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.suffix == ".csv":
            with path.open("w", newline="") as fh:
                writer = csv.DictWriter(fh, fieldnames=["file", "prompt", *self.scores])
                writer.writeheader()
                writer.writerows(self.rows())
        elif path.suffix == ".json":
            rewards = {n: {"differentiable": i.differentiable, "higher_is_better": i.higher_is_better, "typical_range": i.typical_range}
                       for n, i in self.info.items()}
            path.write_text(json.dumps({"rewards": rewards, "summary": self.summary(), "images": self.rows()}, indent=1))
        else:
            raise ConfigError(f"output {path} must end in .csv or .json")
        return path

    def table(self) -> str:
        """The summary as an aligned text table."""
        header = ("reward", "mean", "std", "min", "max", "typical", "better")
        lines = [header]
        for name, s in self.summary().items():
            info = self.info.get(name)
            typical = f"{info.typical_range[0]:g}..{info.typical_range[1]:g}" if info and info.typical_range else "-"
            better = "higher" if info is None or info.higher_is_better else "lower"
            lines.append((name, *(f"{s[k]:.4f}" for k in ("mean", "std", "min", "max")), typical, better))
        widths = [max(len(row[i]) for row in lines) for i in range(len(header))]
        text = ["  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths))) for row in lines]
        return "\n".join([text[0], "  ".join("-" * w for w in widths), *text[1:], f"({len(self.files)} images)"])


def find_images(folder: str | Path) -> list[Path]:
    """Image files directly in ``folder``, sorted by name."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ConfigError(f"image folder {folder} does not exist")
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    if not files:
        raise ConfigError(f"no images ({', '.join(IMAGE_SUFFIXES)}) in {folder}")
    return files


def read_prompts(files: Sequence[Path], prompts_file: str | Path | None = None, prompt: str | None = None) -> list[str | None]:
    """One prompt per image: from ``prompts_file``, else ``prompt``, else ``NAME.txt`` files beside the images, else None."""
    if prompts_file is not None:
        return _prompts_from_file(files, Path(prompts_file))
    if prompt is not None:
        return [prompt] * len(files)
    sidecars = [f.with_suffix(".txt") for f in files]
    if all(s.is_file() for s in sidecars):
        return [s.read_text().strip() for s in sidecars]
    return [None] * len(files)


def _prompts_from_file(files: Sequence[Path], path: Path) -> list[str]:
    """Prompts matched to the images by name (a JSON object, or records with a ``file`` field), else
    a prompt set in any format :func:`didr.data.prompt_sets.load_prompt_set` reads, in sorted file order."""
    if not path.exists():
        raise ConfigError(f"prompt file {path} does not exist")
    if path.is_file() and path.suffix != ".parquet" and not path.read_bytes().strip():
        raise ConfigError(f"prompt file {path} is empty")
    by_name = _prompts_by_name(path) if path.is_file() and path.suffix in (".json", ".jsonl", ".csv") else None
    if by_name is not None:
        return _match(files, by_name, path)
    return _in_order(files, load_prompt_set(path).prompts, path)


def _prompts_by_name(path: Path) -> dict[str, str] | None:
    """{file name: prompt} when the file maps images to prompts, else None (a prompt set)."""
    try:
        text = path.read_text(encoding="utf-8-sig")
        if path.suffix == ".json":
            records = json.loads(text)
            if isinstance(records, dict):
                return {str(k): str(v) for k, v in records.items()}
        elif path.suffix == ".jsonl":
            records = [json.loads(line) for line in text.splitlines() if line.strip()]
        else:
            records = list(csv.DictReader(text.splitlines()))
    except (UnicodeDecodeError, json.JSONDecodeError, csv.Error):
        return None  # the prompt set loader says what is wrong, and where
    if isinstance(records, list) and records and isinstance(records[0], dict) and "file" in records[0]:
        return {str(r["file"]): _record_prompt(r, path) for r in records}
    return None


def _record_prompt(record: Any, path: Path) -> str:
    if isinstance(record, dict) and "prompt" in record:
        return str(record["prompt"])
    raise ConfigError(f"prompt file {path}: expected records with a 'file' and a 'prompt' field, got {record!r}")


def _in_order(files: Sequence[Path], prompts: list[str], path: Path) -> list[str]:
    if len(prompts) == 1:
        return prompts * len(files)
    if len(prompts) != len(files):
        raise ConfigError(f"prompt file {path} has {len(prompts)} prompts for {len(files)} images (give one per image, or one for all)")
    return prompts


def _match(files: Sequence[Path], mapping: dict[str, str], path: Path) -> list[str]:
    """Prompts looked up by file name (or stem)."""
    out = []
    for f in files:
        for key in (f.name, f.stem, str(f)):
            if key in mapping:
                out.append(str(mapping[key]))
                break
        else:
            raise ConfigError(f"prompt file {path} has no prompt for {f.name}")
    return out


def load_image(path: Path) -> Tensor:
    """(3, H, W) float in [-1, 1], the rewards' convention."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            array = np.asarray(im.convert("RGB"))
    except OSError as err:
        raise DidrError(f"cannot read image {path} ({err})") from None
    return torch.from_numpy(array.copy()).permute(2, 0, 1).float() / 127.5 - 1


def _batches(files: Sequence[Path], batch_size: int) -> Iterable[tuple[list[int], Tensor]]:
    """Consecutive images of the same size, at most ``batch_size`` at a time."""
    idx, imgs = [], []
    for i, f in enumerate(files):
        img = load_image(f)
        if imgs and (len(imgs) == batch_size or img.shape != imgs[0].shape):
            yield idx, torch.stack(imgs)
            idx, imgs = [], []
        idx.append(i)
        imgs.append(img)
    if imgs:
        yield idx, torch.stack(imgs)


def named_rewards(rewards: Any, device: Any, dtype: Any) -> dict[str, Callable]:
    """Specs or callables (a list, or a dict by name) -> {unique name: reward}."""
    if isinstance(rewards, (str, bytes)) or callable(rewards):
        rewards = [rewards]
    if not rewards:
        raise ConfigError("give at least one reward to score with")
    items = rewards.items() if isinstance(rewards, dict) else ((None, r) for r in rewards)
    out: dict[str, Callable] = {}
    for name, spec in items:
        reward = load_reward(spec, device=device, dtype=dtype)
        name = name or reward_info(reward).name
        base, k = name, 2
        while name in out:  # two specs of the same model, e.g. two PickScore checkpoints
            name, k = f"{base}#{k}", k + 1
        out[name] = reward
    return out


def score_images(
    folder: str | Path,
    rewards: Any,
    *,
    prompts: str | Path | Sequence[str] | None = None,
    prompt: str | None = None,
    batch_size: int = 8,
    device: Any = None,
    dtype: Any = None,
) -> ScoreResult:
    """Score every image in ``folder`` with each reward.

    ``rewards``: spec strings (``didr.rewards.registry``), reward callables, or a dict name -> either.
    ``prompts``: a prompt file (see the module docstring) or a list of prompts in sorted file order;
    ``prompt``: one prompt for every image. Without either, ``NAME.txt`` files beside the images are used.
    """
    if batch_size < 1:
        raise ConfigError(f"batch size must be >= 1, got {batch_size}")
    files = find_images(folder)
    if prompts is not None and not isinstance(prompts, (str, Path)):
        texts: list[str | None] = _in_order(files, list(prompts), Path("<prompts>"))
    else:
        texts = read_prompts(files, prompts, prompt)
    named = named_rewards(rewards, device, dtype)
    result = ScoreResult([f.name for f in files], texts, {n: [math.nan] * len(files) for n in named},
                         {n: reward_info(r) for n, r in named.items()})
    with torch.no_grad():
        for idx, images in _batches(files, batch_size):
            batch_prompts = None if texts[idx[0]] is None else [texts[i] for i in idx]
            for name, reward in named.items():
                values = call_reward(reward, images, batch_prompts).float().cpu()
                for i, v in zip(idx, values.tolist()):
                    result.scores[name][i] = v
    return result
