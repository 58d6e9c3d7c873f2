"""Checkpoints that survive crashes: atomic, verified, pruned, loadable without unpickling code, and
resumable on any number of processes.

Layout under ``OUT/checkpoints/``::

    step-00000200/
        tensors-rank00000.safetensors   weights (generator.*, ta.*, ema.*) and optimiser states
                                        (optim.<role>.<parameter>.<state>); whole tensors are written by
                                        the main process, and under FSDP2 each process writes its own
                                        rows of every sharded one into its own file (didr.train.shard_io)
        rng-slot00000.pt                the random stream of each slot of the global batch (didr.train.streams)
        state.json                      step, counters, world size, the config, the optimisers' settings and
                                        LR schedules, the sharded tensors' shapes, and each file's size and sha256

A checkpoint is written into a hidden ``.step-XXXXXXXX.tmp`` directory, every file fsynced, and
the directory renamed into place, so a crash leaves either a complete checkpoint or a temporary
directory that the next save removes. ``state.json`` is written last; a checkpoint whose files do
not match their recorded size and hash (truncated, corrupt) is skipped with a warning, and the one
before it is used. ``.pt`` files are read with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import json
import os
import shutil
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file
from torch import Tensor

from didr.errors import CheckpointError
from didr.files import atomic_save_tensors, atomic_write_text, fsync_dir, fsync_file, plain_tensors, sha256_file
from didr.train.config import RESUMABLE_CHANGES
from didr.train.shard_io import RowReader, pieces

FORMAT = 2
STATE = "state.json"


def tensors_file(rank: int) -> str:
    return f"tensors-rank{rank:05d}.safetensors"


def rng_file(slot: int) -> str:
    return f"rng-slot{slot:05d}.pt"


def checkpoint_name(step: int) -> str:
    return f"step-{step:08d}"


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


def write_rng(tmp: Path, slot: int, state: dict[str, Any]) -> None:
    """A slot's random stream, written by the process that draws from it."""
    path = tmp / rng_file(slot)
    torch.save(state, path)
    fsync_file(path)


def write_tensors(tmp: Path, rank: int, tensors: dict[str, Tensor]) -> dict[str, list[int]]:
    """This process's file: its rows of every sharded tensor and, on the main process, every whole
    one. Returns the sharded tensors' whole shapes (for ``state.json``)."""
    mine, layout = pieces(tensors, rank)
    if not mine and rank != 0:  # data parallelism: the main process writes the whole tensors
        return layout
    path = tmp / tensors_file(rank)
    save_file(plain_tensors(mine), str(path))
    fsync_file(path)
    return layout


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
    """A verified checkpoint, opened: its tensors are read on demand, each process its own rows."""

    path: Path
    state: dict[str, Any]
    tensors: RowReader
    rng: dict[int, dict[str, Any] | None]  # each of this process's slots' stream; None where none was saved

    @property
    def step(self) -> int:
        return int(self.state["step"])

    @property
    def world_size(self) -> int:
        return int(self.state["world_size"])


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
    for rank in range(int(state.get("world_size", 1)) if state.get("layout") else 1):
        if tensors_file(rank) not in state["files"]:
            raise CheckpointError(f"{path}: {tensors_file(rank)} is not recorded in {STATE}")
    return state


def load(path: Path, slots: list[int] | None = None) -> Checkpoint:
    """Open one checkpoint (verified first) for a process whose slots are ``slots`` (default [0]);
    raises CheckpointError if it is unusable."""
    state = read_state(path)
    layout = state.get("layout") or {}
    files = [path / tensors_file(r) for r in range(int(state["world_size"]) if layout else 1)]
    try:
        reader = RowReader(files, layout)
        reader.keys()  # parses the main process's file
        rng = {k: torch.load(path / rng_file(k), map_location="cpu", weights_only=True) if (path / rng_file(k)).is_file() else None
               for k in (slots or [0])}
    except Exception as err:  # a file that hashes right but cannot be parsed: still a bad checkpoint
        raise CheckpointError(f"{path}: cannot be read ({type(err).__name__}: {err})") from None
    return Checkpoint(path, state, reader, rng)


def latest_state(root: Path) -> tuple[Path, dict[str, Any]] | None:
    """The newest checkpoint that verifies, with its state; bad ones are skipped with a warning."""
    for path in list_checkpoints(root):
        try:
            return path, read_state(path)
        except CheckpointError as err:
            warnings.warn(f"skipping checkpoint: {err}", stacklevel=2)
    return None


def load_latest(root: Path, slots: list[int] | None = None) -> Checkpoint | None:
    """The newest checkpoint that verifies and opens; bad ones are skipped with a warning."""
    for path in list_checkpoints(root):
        try:
            return load(path, slots)
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
