"""Checkpoints that survive crashes: atomic, verified, pruned, and loadable without unpickling code.

Layout under ``OUT/checkpoints/``::

    step-00000200/
        models.safetensors    generator.*, ta.*, ema.* weights
        optim.pt              optimiser, LR schedule and grad-scaler states (tensors, numbers, lists);
                              under FSDP / DeepSpeed one optim-rankNNNNN.pt per process (its shard)
        rng-rank00000.pt      each process's torch / CUDA / numpy / python RNG state
        state.json            step, counters, world size, the config, and each file's size and sha256

A checkpoint is written into a hidden ``.step-XXXXXXXX.tmp`` directory, every file fsynced, and
the directory renamed into place, so a crash leaves either a complete checkpoint or a temporary
directory that the next save removes. ``state.json`` is written last; a checkpoint whose files do
not match their recorded size and hash (truncated, corrupt) is skipped with a warning, and the one
before it is used. ``.pt`` files are read with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import Tensor

from didr.errors import CheckpointError
from didr.files import atomic_save_tensors, atomic_write_text, fsync_dir, fsync_file, plain_tensors, sha256_file
from didr.train.config import RESUMABLE_CHANGES

FORMAT = 1
STATE = "state.json"
MODELS = "models.safetensors"
OPTIM = "optim.pt"


def rng_file(rank: int) -> str:
    return f"rng-rank{rank:05d}.pt"


def optim_shard_file(rank: int) -> str:
    return f"optim-rank{rank:05d}.pt"


def checkpoint_name(step: int) -> str:
    return f"step-{step:08d}"


# --- RNG ---------------------------------------------------------------------------------------


def rng_state() -> dict[str, Any]:
    """This process's RNG states, as tensors and plain numbers (loadable with weights_only)."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos), "has_gauss": int(has_gauss), "gauss": float(gauss)},
        "python": random.getstate(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# --- writing -----------------------------------------------------------------------------------


def begin(root: Path, step: int) -> Path:
    """Create the temporary directory of the checkpoint at ``step`` (main process only), after
    removing what an interrupted save left behind."""
    root.mkdir(parents=True, exist_ok=True)
    for stale in root.glob(".step-*.tmp"):
        shutil.rmtree(stale, ignore_errors=True)
    tmp = root / f".{checkpoint_name(step)}.tmp"
    tmp.mkdir()
    return tmp


def temp_dir(root: Path, step: int) -> Path:
    return root / f".{checkpoint_name(step)}.tmp"


def write_rng(tmp: Path, rank: int) -> None:
    """Each process writes its own RNG state into the temporary directory."""
    path = tmp / rng_file(rank)
    torch.save(rng_state(), path)
    fsync_file(path)


def write_optim_shard(tmp: Path, rank: int, optim: dict[str, Any]) -> None:
    """A process's own shard of the optimiser state (FSDP, DeepSpeed)."""
    path = tmp / optim_shard_file(rank)
    torch.save(optim, path)
    fsync_file(path)


def write_main(tmp: Path, models: dict[str, Tensor], optim: dict[str, Any] | None) -> None:
    """The weights (safetensors) and, unless each process saved its shard, the optimiser /
    schedule states: written by the main process."""
    save_file(plain_tensors(models), str(tmp / MODELS))
    fsync_file(tmp / MODELS)
    if optim is not None:
        torch.save(optim, tmp / OPTIM)
        fsync_file(tmp / OPTIM)


def commit(tmp: Path, root: Path, step: int, state: dict[str, Any], keep: int) -> Path:
    """Record every file's size and hash in state.json, rename the directory into place, and
    keep only the last ``keep`` checkpoints."""
    files = {p.name: {"size": p.stat().st_size, "sha256": sha256_file(p)} for p in sorted(tmp.iterdir())}
    state = {"format": FORMAT, "step": step, **state, "files": files}
    with open(tmp / STATE, "w") as f:
        json.dump(state, f, indent=1)
        f.flush()
        os.fsync(f.fileno())
    fsync_dir(tmp)
    final = root / checkpoint_name(step)
    if final.exists():  # the same step saved again (e.g. the end of a resumed, finished run)
        shutil.rmtree(final)
    tmp.rename(final)
    fsync_dir(root)
    prune(root, keep)
    return final


def list_checkpoints(root: Path) -> list[Path]:
    """Complete-looking checkpoint directories, newest first."""
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if p.is_dir() and p.name.startswith("step-") and p.name[5:].isdigit()]
    return sorted(found, key=lambda p: int(p.name[5:]), reverse=True)


def prune(root: Path, keep: int) -> None:
    for old in list_checkpoints(root)[keep:]:
        shutil.rmtree(old, ignore_errors=True)


# --- reading -----------------------------------------------------------------------------------


@dataclass
class Checkpoint:
    """A verified checkpoint, loaded."""

    path: Path
    state: dict[str, Any]
    models: dict[str, Tensor]
    optim: dict[str, Any]
    rng: dict[str, Any] | None  # this process's RNG state; None when it was saved with fewer processes

    @property
    def step(self) -> int:
        return int(self.state["step"])


def read_state(path: Path) -> dict[str, Any]:
    """state.json, after checking every listed file's size and hash."""
    try:
        state = json.loads((path / STATE).read_text())
    except FileNotFoundError:
        raise CheckpointError(f"{path}: no {STATE} (incomplete checkpoint)") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise CheckpointError(f"{path}/{STATE} is corrupt ({err})") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT or not isinstance(state.get("files"), dict):
        raise CheckpointError(f"{path}/{STATE}: not a didr checkpoint of format {FORMAT}")
    for name, info in state["files"].items():
        f = path / name
        if not f.is_file():
            raise CheckpointError(f"{path}: {name} is missing")
        if f.stat().st_size != info["size"]:
            raise CheckpointError(f"{path}: {name} is truncated ({f.stat().st_size} of {info['size']} bytes)")
        if sha256_file(f) != info["sha256"]:
            raise CheckpointError(f"{path}: {name} is corrupt (sha256 mismatch)")
    for name in (MODELS, OPTIM if OPTIM in state["files"] else optim_shard_file(0)):
        if name not in state["files"]:
            raise CheckpointError(f"{path}: {name} is not recorded in {STATE}")
    return state


def load(path: Path, rank: int = 0) -> Checkpoint:
    """Load one checkpoint (verified first); raises CheckpointError if it is unusable."""
    state = read_state(path)
    try:
        models = load_file(str(path / MODELS))
        optim_path = path / (OPTIM if OPTIM in state["files"] else optim_shard_file(rank))
        if not optim_path.is_file():
            raise CheckpointError(f"{path}: no optimiser shard for rank {rank} (saved with {state.get('world_size')} processes)")
        optim = torch.load(optim_path, map_location="cpu", weights_only=True)
        rng_path = path / rng_file(rank)
        rng = torch.load(rng_path, map_location="cpu", weights_only=True) if rng_path.is_file() else None
    except Exception as err:  # a file that hashes right but cannot be parsed: still a bad checkpoint
        raise CheckpointError(f"{path}: cannot be read ({type(err).__name__}: {err})") from None
    return Checkpoint(path, state, models, optim, rng)


def latest_state(root: Path) -> tuple[Path, dict[str, Any]] | None:
    """The newest checkpoint that verifies, with its state; bad ones are skipped with a warning."""
    for path in list_checkpoints(root):
        try:
            return path, read_state(path)
        except CheckpointError as err:
            warnings.warn(f"skipping checkpoint: {err}", stacklevel=2)
    return None


def load_latest(root: Path, rank: int = 0) -> Checkpoint | None:
    """The newest checkpoint that verifies and loads; bad ones are skipped with a warning."""
    for path in list_checkpoints(root):
        try:
            return load(path, rank)
        except CheckpointError as err:
            warnings.warn(f"skipping checkpoint: {err}", stacklevel=2)
    return None


def flatten(d: dict, prefix: str = "") -> dict:
    """{"train": {"steps": 1}} -> {"train.steps": 1}."""
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        out.update(flatten(v, key + ".") if isinstance(v, dict) else {key: v})
    return out


def check_resumable(saved: dict, current: dict, where: Path | str) -> None:
    """Refuse to resume under another configuration (another backbone, another method, another
    loop): of the run's settings, only the train section's RESUMABLE_CHANGES may change."""
    allowed = {f"train.{f}" for f in RESUMABLE_CHANGES}
    old, new = flatten(saved), flatten(current)
    for key in sorted(set(old) | set(new)):
        if key not in allowed and old.get(key) != new.get(key):
            raise CheckpointError(f"cannot resume from {where}: {key} changed ({old.get(key)!r} -> {new.get(key)!r}); "
                                  f"only {', '.join(sorted(allowed))} may change")


def require_usable(root: Path) -> None:
    """Raise if ``root`` holds checkpoints but none of them is usable: resuming must not quietly
    start over (and, by pruning, delete the damaged ones)."""
    found = list_checkpoints(root)
    if found:
        raise CheckpointError(
            f"cannot resume: none of the {len(found)} checkpoint(s) under {root} is readable (see the warnings above); "
            "move them away to start from scratch"
        )


# --- export ------------------------------------------------------------------------------------


def export_generator(out_dir: Path, weights: dict[str, Tensor], info: dict[str, Any]) -> Path:
    """The final generator as ``OUT/export/generator.safetensors`` with ``generator.json`` (config,
    step) beside it, both written atomically."""
    export = out_dir / "export"
    export.mkdir(parents=True, exist_ok=True)
    path = export / "generator.safetensors"
    atomic_save_tensors(weights, path, metadata={"format": "didr-generator"})
    atomic_write_text(json.dumps(info, indent=2), export / "generator.json")
    return path
