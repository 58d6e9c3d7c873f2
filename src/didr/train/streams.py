"""The loop's random numbers: one stream per slot of the global batch, so that how the batch is split
over processes and micro-batches does not change the noise any part of it sees.

A step's global batch is ``processes x grad_accum`` micro-batches. Micro-batch ``m`` of process
``r`` is slot ``k = r * grad_accum + m``, and it draws every random number it uses (its generator
inputs, the objective's times and noise) from stream ``k``, seeded ``seed + k``. So two processes
with ``grad_accum: 1`` and one process with ``grad_accum: 2`` draw the same numbers for the same
step, and compute the same update up to the order of floating-point sums; a checkpoint saves each
slot's stream, so a run resumes exactly on either. With one slot per process (``grad_accum: 1``,
the usual case) the stream is the process's own random state, seeded ``seed + rank``.

A stream is the whole random state of the process: torch's CPU and current-GPU generators, numpy's
and python's.
"""

from __future__ import annotations

import random
from typing import Any

import numpy as np
import torch


def seed_all(seed: int) -> None:
    """Seed torch (CPU and GPUs), numpy and python: every source of randomness the loop uses."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


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


def reseeded(seed: int, slot: int, step: int) -> int:
    """The seed of a slot that a checkpoint has no stream for (it was saved with fewer slots):
    fresh, reproducible, and apart from every slot's first seed."""
    return seed + slot + 1_000_003 * step


class RandomStreams:
    """The streams of one process's slots; ``switch(k)`` makes slot ``k``'s the process's random state."""

    def __init__(self, seed: int, rank: int, grad_accum: int):
        self.seed = seed
        self.slots = [rank * grad_accum + m for m in range(grad_accum)]
        self.parked: dict[int, dict[str, Any]] = {}
        for k in reversed(self.slots):
            seed_all(seed + k)
            self.parked[k] = rng_state()
        self.live = self.slots[0]  # the slot whose stream is the process's state now
        del self.parked[self.live]

    def switch(self, k: int) -> None:
        if k != self.live:
            self.parked[self.live] = rng_state()
            set_rng_state(self.parked.pop(k))
            self.live = k

    def states(self) -> dict[int, dict[str, Any]]:
        """Every slot's stream, as :func:`rng_state` gives it."""
        return {k: rng_state() if k == self.live else self.parked[k] for k in self.slots}

    def restore(self, saved: dict[int, dict[str, Any] | None], step: int) -> list[int]:
        """Take each slot's saved stream; a slot without one (``None``) is reseeded. Returns those slots."""
        fresh = []
        for k in self.slots:
            state = saved.get(k)
            if state is None:
                seed_all(reseeded(self.seed, k, step))
                state, fresh = rng_state(), [*fresh, k]
            self.parked[k] = state
        self.live = self.slots[0]
        set_rng_state(self.parked.pop(self.live))
        return fresh


def batch_split_note(saved_world: int, saved_accum: int, world: int, accum: int) -> str | None:
    """What a resume on another split of the global batch changes (None: the same split)."""
    split = f"saved with {saved_world} process(es) x {saved_accum} micro-batch(es), now {world} x {accum}"
    if saved_world * saved_accum != world * accum:
        return f"{split}: the global batch changes from {saved_world * saved_accum} to {world * accum} micro-batches"
    if saved_world != world:
        return f"{split}: the same global batch and random streams"
    return None
