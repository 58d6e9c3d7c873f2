"""Tensors split by rows over processes: written by each process, read back for any number of processes.

FSDP2 shards each parameter, and with it its gradient and optimiser state, by rows: of ``W``
processes, process ``r`` holds rows ``[r c, min(n, (r + 1) c))`` with ``c = ceil(n / W)``, as
``torch.chunk`` splits them. A checkpoint keeps exactly those rows in the process's own file; a
whole tensor is written once, by the main process. Reading for ``W'`` processes takes each
process's rows from whichever files hold them (safetensors slices, memory-mapped), so a checkpoint
resumes on any number of processes, sharded or not, and no process loads more than its share.
"""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors import safe_open
from torch import Tensor
from torch.distributed.tensor import DTensor, Shard

from didr.errors import CheckpointError


def rows_of(n: int, world: int, rank: int) -> tuple[int, int]:
    """The rows ``[start, stop)`` of an ``n``-row tensor that process ``rank`` of ``world`` holds."""
    chunk = -(-n // world)
    start = min(n, rank * chunk)
    return start, min(n, start + chunk)


def pieces(tensors: dict[str, Tensor], rank: int) -> tuple[dict[str, Tensor], dict[str, list[int]]]:
    """What process ``rank`` writes: its rows of every sharded tensor and, on the main process,
    every whole one; and the sharded tensors' whole shapes (the same on every process)."""
    out, layout = {}, {}
    for key, t in tensors.items():
        if isinstance(t, DTensor):
            local = t.to_local()
            if tuple(t.placements) != (Shard(0),) or t.device_mesh.ndim != 1 or t.dim() == 0:
                raise CheckpointError(f"{key}: only tensors sharded by rows over one mesh dimension are saved, got {t.placements}")
            start, stop = rows_of(t.shape[0], t.device_mesh.size(), t.device_mesh.get_local_rank())
            if local.shape[0] != stop - start:
                raise CheckpointError(f"{key}: this process holds {local.shape[0]} rows, not rows {start}:{stop} of {t.shape[0]}")
            out[key], layout[key] = local, list(t.shape)
        elif rank == 0:
            out[key] = t
    return out, layout


class RowReader:
    """Reads the tensors that ``files[r]`` (process r's) hold, whole or as any process's rows."""

    def __init__(self, files: list[Path], layout: dict[str, list[int]]):
        self.files, self.layout = files, layout
        self.opened: dict[int, object] = {}

    def open(self, rank: int):
        if rank not in self.opened:
            self.opened[rank] = safe_open(str(self.files[rank]), framework="pt", device="cpu")
        return self.opened[rank]

    def keys(self) -> set[str]:
        return set(self.open(0).keys()) | set(self.layout)

    def rows(self, key: str, start: int, stop: int) -> Tensor:
        """Rows ``[start, stop)`` of the whole tensor ``key``."""
        if key not in self.layout:
            return self.open(0).get_slice(key)[start:stop]
        n, world, parts = self.layout[key][0], len(self.files), []
        for r in range(world):
            a, b = rows_of(n, world, r)
            lo, hi = max(a, start), min(b, stop)
            if lo < hi:
                parts.append(self.open(r).get_slice(key)[lo - a : hi - a])
        return torch.cat(parts) if parts else self.open(0).get_slice(key)[0:0]  # every process saved a piece, maybe empty

    def read(self, key: str, like: Tensor | None = None) -> Tensor:
        """The tensor ``key``: whole, or, when ``like`` is sharded, this process's rows of it as a
        DTensor placed like ``like``."""
        if key not in self.keys():
            raise KeyError(key)
        if isinstance(like, DTensor):
            start, stop = rows_of(like.shape[0], like.device_mesh.size(), like.device_mesh.get_local_rank())
            local = self.rows(key, start, stop).to(like.to_local().device)
            return DTensor.from_local(local, like.device_mesh, like.placements, shape=like.shape, stride=like.stride(), run_check=False)
        if key not in self.layout:
            return self.open(0).get_tensor(key)
        return self.rows(key, 0, self.layout[key][0])

    def shape(self, key: str) -> list[int]:
        return self.layout[key] if key in self.layout else list(self.open(0).get_slice(key).get_shape())
