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


def rank_accelerator():
    """An accelerate Accelerator over this rank's gloo group, as a launch would build it (the
    forked process inherits the parent's accelerate state, which is reset here)."""
    import os

    from accelerate.state import AcceleratorState, PartialState

    from didr.train.distributed import make_accelerator

    rank = dist.get_rank()
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE="2", LOCAL_WORLD_SIZE="2", MASTER_ADDR="127.0.0.1")
    AcceleratorState._reset_state(reset_partial_state=True)
    PartialState._reset_state()
    return make_accelerator()
