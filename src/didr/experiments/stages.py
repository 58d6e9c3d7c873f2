"""The stage cache: expensive preparation outputs (a reference network, reward models, teacher
samples, the initial generator) saved once under ``OUT/stages/`` and reused by reruns and sweeps.

Each stage is one safetensors file whose metadata carries a digest of the settings that made it;
a file made with other settings is rebuilt. The file is written atomically (temporary file,
fsync, rename), so an interrupted run leaves either the old stage or the new one, never half of
one. Every process builds (same seed, same result); only the main process writes.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Callable

from safetensors import safe_open
from safetensors.torch import load_file
from torch import Tensor, nn

from didr.train.checkpoint import atomic_save_tensors
from didr.train.distributed import is_main_process


def digest(obj) -> str:
    """A short, stable digest of JSON-able settings: the cache key of a stage."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()[:12]


def stage_metadata(path: Path) -> dict[str, str]:
    """The string metadata a stage was saved with (its ``key`` and any extra fields)."""
    with safe_open(str(path), "pt") as f:
        return f.metadata() or {}


def load_stage(path: Path | None, key: str) -> dict[str, Tensor] | None:
    """The stage's tensors if ``path`` holds them made with ``key``, else None."""
    if path is None or not path.is_file() or stage_metadata(path).get("key") != key:
        return None
    return load_file(str(path))


def save_stage(path: Path | None, key: str, tensors: dict[str, Tensor], **info: str) -> None:
    """Save a stage with its key (and ``info``, e.g. how long it took) in one atomic file."""
    if path is not None and is_main_process():
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_save_tensors(tensors, path, metadata={**info, "key": key})


def cached_tensors(path: Path | None, key: str, build: Callable[[], dict[str, Tensor]]) -> dict[str, Tensor]:
    """Load the tensors a stage made with ``key``, or ``build`` and save them."""
    tensors = load_stage(path, key)
    if tensors is None:
        tensors = build()
        save_stage(path, key, tensors)
    return tensors


def cached_module(path: Path | None, key: str, module: nn.Module, build: Callable[[], None]) -> nn.Module:
    """Load ``module``'s weights from a stage made with ``key``, or train it with ``build`` and save them."""
    state = load_stage(path, key)
    if state is not None:
        module.load_state_dict(state)
    else:
        build()
        save_stage(path, key, module.state_dict())
    return module
