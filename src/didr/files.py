"""Files that are never half-written, and the digests that name what made them.

Every file a run or a cache keeps (checkpoints, stages, exports, reports) is written to a temporary
name beside its destination, flushed to disk and renamed into place: an interrupted write leaves the
old file or the new one, never part of one.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from safetensors.torch import save_file
from torch import Tensor


def digest(obj) -> str:
    """A short, stable digest of JSON-able settings: the cache key of whatever they produce."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()[:12]


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def fsync_dir(path: Path) -> None:
    """Make a rename inside ``path`` durable (a no-op where directories cannot be opened)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def plain_tensors(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """CPU, contiguous, unshared copies: what safetensors accepts."""
    out, seen = {}, set()
    for k, v in state.items():
        v = v.detach().cpu().contiguous()
        if v.data_ptr() in seen and v.numel() > 0:
            v = v.clone()  # tied weights: safetensors refuses shared storage
        seen.add(v.data_ptr())
        out[k] = v
    return out


def atomic_save_tensors(tensors: dict[str, Tensor], path: Path, metadata: dict[str, str] | None = None) -> None:
    """safetensors written to a temporary file, fsynced, then renamed over ``path``."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    save_file(plain_tensors(tensors), str(tmp), metadata=metadata)
    fsync_file(tmp)
    tmp.replace(path)
    fsync_dir(path.parent)


def atomic_write_text(text: str, path: Path) -> None:
    atomic_write_bytes(text.encode(), path, durable=True)


def atomic_write_bytes(data: bytes, path: Path, durable: bool = False) -> None:
    """``data`` to a temporary file beside ``path``, then renamed over it: a reader sees all or nothing;
    ``durable``: fsynced, so that it survives a crash of the machine too."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        if durable:
            f.flush()
            os.fsync(f.fileno())
    tmp.replace(path)
    if durable:
        fsync_dir(path.parent)
