"""The stage cache: expensive preparation outputs (a reference network, reward models, teacher
samples, the initial generator) saved once under ``OUT/stages/`` and reused by reruns and sweeps.

Each stage is one safetensors file whose metadata carries a digest (:func:`didr.files.digest`) of the settings that made it;
a file made with other settings is rebuilt. The file is written atomically (temporary file,
fsync, rename), so an interrupted run leaves either the old stage or the new one, never half of
one. Every process builds (same seed, same result); only the main process writes.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Callable

from safetensors import safe_open
from safetensors.torch import load_file
from torch import Tensor, nn

from didr.files import atomic_save_tensors
from didr.runtime import is_main_process


def stage_metadata(path: Path) -> dict[str, str]:
    """The string metadata a stage was saved with (its ``key`` and any extra fields)."""
    with safe_open(str(path), "pt") as f:
        return f.metadata() or {}


def is_cached(path: Path | None, key: str) -> bool:
    """Whether ``path`` holds a stage made with ``key`` (its tensors left unread)."""
    return path is not None and path.is_file() and stage_metadata(path).get("key") == key


def load_stage(path: Path | None, key: str) -> dict[str, Tensor] | None:
    """The stage's tensors if ``path`` holds them made with ``key``, else None."""
    return load_file(str(path)) if is_cached(path, key) else None


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


def cached_timed(path: Path, key: str, build: Callable[[], dict[str, Tensor]]) -> tuple[dict[str, Tensor], float]:
    """The tensors of a stage made with ``key`` and the seconds their building took, or ``build``
    them, timed, and save both."""
    tensors = load_stage(path, key)
    if tensors is not None:
        return tensors, float(stage_metadata(path)["seconds"])
    start = time.perf_counter()
    tensors = build()
    seconds = time.perf_counter() - start
    save_stage(path, key, tensors, seconds=repr(seconds))
    return tensors, seconds


def cached_module(path: Path | None, key: str, module: nn.Module, build: Callable[[], None]) -> nn.Module:
    """Load ``module``'s weights from a stage made with ``key``, or train it with ``build`` and save them."""
    state = load_stage(path, key)
    if state is not None:
        module.load_state_dict(state)
    else:
        build()
        save_stage(path, key, module.state_dict())
    return module
