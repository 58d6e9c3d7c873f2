"""Run a function on two forked CPU processes joined by one gloo process group."""

from __future__ import annotations

import socket

import torch.distributed as dist
import torch.multiprocessing as mp


def _rank_main(rank: int, fn, port: int, out) -> None:
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    try:
        out[rank] = fn(rank)
    finally:
        dist.destroy_process_group()


def on_two_gloo_ranks(fn) -> list:
    """``[fn(0), fn(1)]``, each computed in its own process of a two-process gloo group (fork start,
    so ``fn`` may be a local function). Its return values must be picklable."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with mp.Manager() as manager:
        out = manager.dict()
        mp.start_processes(_rank_main, args=(fn, port, out), nprocs=2, start_method="fork")
        return [out[0], out[1]]
