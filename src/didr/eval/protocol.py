"""The protocol block of an evaluation: everything that decides its numbers, recorded with them.

Two evaluations compare only when their protocols agree on every field of :data:`COMPARED`: the
package versions, the prompts (their hash), the seeds, the image size and precision, each reward
(its spec, the sha256 of its weight files and its preprocessing) and the feature model of the
fidelity metrics. The generators themselves are recorded (source, kind, the pipeline call) but
naturally differ. :func:`mismatches` names what differs; ``didr compare`` refuses such reports
unless forced.
"""

from __future__ import annotations

import platform
import sys
from pathlib import Path
from typing import Any, Callable

from didr import __version__
from didr.files import sha256_file
from didr.hub import is_local, local_folder, resolve_weight_file, split_file_ref
from didr.rewards.registry import REFERENCES, parse_reward_spec

#: the fields two evaluations must share to be compared
COMPARED = ("versions", "prompts", "seeds", "resolution", "dtype", "rewards", "features")
#: weight files of a folder-type model (a transformers CLIP)
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth")

_HASHES: dict[tuple[str, int, float], str] = {}


def versions() -> dict[str, str]:
    import diffusers
    import torch
    import transformers

    return {"python": platform.python_version(), "torch": torch.__version__, "diffusers": diffusers.__version__,
            "transformers": transformers.__version__, "didr": __version__}


def file_hash(path: Path) -> str:
    """sha256 of a file, computed once per (path, size, mtime) in a process."""
    stat = path.stat()
    key = (str(path.resolve()), stat.st_size, stat.st_mtime)
    if key not in _HASHES:
        _HASHES[key] = sha256_file(path)
    return _HASHES[key]


def reward_weights(spec: str) -> dict[str, str]:
    """sha256 of each weight file a reward spec loads (file name -> hash); a ``py:`` reward: its module's source."""
    parsed = parse_reward_spec(spec)
    if parsed.name == "py":
        module = sys.modules.get(str(parsed.source).split(":")[0])
        path = Path(getattr(module, "__file__", "") or "")
        return {path.name: file_hash(path)} if path.is_file() else {}
    if parsed.name not in REFERENCES:
        return {}
    default, marker, is_file = REFERENCES[parsed.name]
    source = parsed.source or default
    if is_file:
        path = resolve_weight_file(source, f"reward {parsed.name}", [parsed.options.get("filename", marker)])
        return {path.name: file_hash(path)}
    repo, file = split_file_ref(source)
    folder = Path(source) if is_local(source) else local_folder(repo, f"reward {parsed.name}", ["*.json", *(f"*{s}" for s in WEIGHT_SUFFIXES)])
    return {p.name: file_hash(p) for p in sorted(folder.iterdir()) if p.suffix in WEIGHT_SUFFIXES and p.is_file()}


def reward_entry(spec: str, reward: Callable) -> dict[str, Any]:
    """What decides a reward's scores: the model, its options, its weights' hashes, its preprocessing
    (the spec's path is not: the same weights elsewhere score the same)."""
    parsed = parse_reward_spec(spec)
    preprocess = getattr(reward, "preprocess", None)
    return {"model": parsed.name, "options": parsed.options, "weights": reward_weights(spec),
            "preprocessing": repr(preprocess) if preprocess is not None else None}


def build_protocol(*, prompts: dict, prompt_source: str, seeds: list[int], resolution: Any, dtype: str, rewards: dict[str, dict],
                   reward_specs: list[str], generators: dict[str, dict], features: dict | None) -> dict[str, Any]:
    """The block: the compared fields (:data:`COMPARED`), and where the prompts and rewards came from (not compared)."""
    return {"versions": versions(), "prompts": prompts, "seeds": list(seeds), "resolution": resolution, "dtype": dtype, "rewards": rewards,
            "features": features, "generators": generators, "prompt_source": prompt_source, "reward_specs": list(reward_specs)}


def mismatches(a: dict, b: dict) -> list[str]:
    """The compared fields on which two protocols differ, each with both values in short."""
    out = []
    for key in COMPARED:
        if a.get(key) != b.get(key):
            out.append(f"{key}: {_short(a.get(key))} vs {_short(b.get(key))}")
    return out


def _short(value: Any, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."
