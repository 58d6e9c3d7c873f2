"""A batch's gradient as the sum of its shards' gradients, the shards in one process or several.

The regression that initialises the image benchmark's generator is the longest stage, and one
process uses one core. :class:`ShardedGradients` splits each batch into ``shards`` and adds the
shards' gradients in a fixed order. With ``jobs >= shards`` every shard but the first is computed by
a helper process of its own, at the same time; otherwise all are computed here, one after another.
Either way each shard's gradient comes from the same weights, the same rows and the same thread
count, and the sum is taken in the same order, so the result does not depend on ``jobs``: the
number of shards is a setting of the training (it enters cache keys), the number of processes is not.

The helper and this process meet at a barrier twice a step: once when the weights are written to
shared memory, once when the helpers' gradients are.
"""

from __future__ import annotations

import copy
import multiprocessing
import multiprocessing.connection
import threading
from typing import Protocol

import torch
from torch import Tensor, nn

#: how long a barrier waits for the other side before the step is declared lost
BARRIER_TIMEOUT_S = 300.0


class ShardTask(Protocol):
    """Picklable: a copy runs in every helper. ``advance`` draws the next batch (every process
    draws the same one); ``loss(model, shard)`` is shard ``shard``'s part of the batch loss, so that
    the parts' gradients add up to the batch's."""

    def advance(self) -> None: ...

    def loss(self, model: nn.Module, shard: int) -> Tensor: ...


class ShardedGradients:
    """``with ShardedGradients(model, task, shards, jobs) as grads: grads.compute()`` sets every
    trained parameter's ``.grad`` to the batch gradient at the current weights."""

    def __init__(self, model: nn.Module, task: ShardTask, shards: int, jobs: int = 1):
        if shards < 1:
            raise ValueError(f"shards must be >= 1, got {shards}")
        self.model, self.task, self.shards = model, task, shards
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.parallel = shards > 1 and jobs >= shards
        self.helpers: list = []

    def __enter__(self) -> ShardedGradients:
        if self.parallel:
            self._start_helpers()
        return self

    def __exit__(self, kind, error, trace) -> None:
        if self.parallel:
            self._stop_helpers(clean=kind is None)

    def compute(self) -> None:
        if not self.parallel:
            self.task.advance()
            grads = [_grads(self.model, self.params, self.task, k) for k in range(self.shards)]
            self._assign(grads[0], [_flat(g, self.params) for g in grads[1:]])
            return
        self.weights.copy_(torch.nn.utils.parameters_to_vector(self.params).detach())
        self._meet("the weights")
        self.task.advance()
        own = _grads(self.model, self.params, self.task, 0)
        self._meet("the helpers' gradients")
        self._assign(own, list(self.helper_grads))

    def _assign(self, own: list[Tensor | None], others: list[Tensor]) -> None:
        """``.grad`` = shard 0's gradient + the others', in shard order (None where shard 0's is:
        a parameter the loss does not reach)."""
        sizes = [p.numel() for p in self.params]
        rest = [flat.split(sizes) for flat in others]
        for i, (p, g) in enumerate(zip(self.params, own)):
            if g is None:
                p.grad = None
                continue
            for parts in rest:
                g = g + parts[i].view_as(g)
            p.grad = g

    def _start_helpers(self) -> None:
        ctx = multiprocessing.get_context("spawn")
        n = sum(p.numel() for p in self.params)
        self.weights = torch.zeros(n).share_memory_()
        self.helper_grads = [torch.zeros(n).share_memory_() for _ in range(self.shards - 1)]
        self.barrier, self.stop = ctx.Barrier(self.shards, timeout=BARRIER_TIMEOUT_S), ctx.Event()
        model = copy.deepcopy(self.model)  # pickling moves what it sends into shared memory: send a copy
        for k in range(1, self.shards):
            helper = ctx.Process(target=_helper, daemon=True, name=f"gradient shard {k}",
                                 args=(model, self.task, k, self.weights, self.helper_grads[k - 1], self.barrier, self.stop, torch.get_num_threads()))
            helper.start()
            self.helpers.append(helper)
        self.closing = False
        threading.Thread(target=self._watch, daemon=True).start()

    def _watch(self) -> None:
        """Break the barrier as soon as a helper dies, so that this process does not wait out the timeout."""
        multiprocessing.connection.wait([h.sentinel for h in self.helpers])
        if not self.closing:
            self.barrier.abort()

    def _meet(self, what: str) -> None:
        try:
            self.barrier.wait()
        except threading.BrokenBarrierError:
            codes = [h.exitcode for h in self.helpers]
            raise RuntimeError(f"a gradient-shard helper process stopped while waiting for {what} (exit codes {codes})") from None

    def _stop_helpers(self, clean: bool) -> None:
        self.closing = True
        if clean:
            self.stop.set()
            try:
                self.barrier.wait()  # releases the helpers, which see the stop
            except threading.BrokenBarrierError:
                pass
        else:
            self.barrier.abort()
        for helper in self.helpers:
            helper.join(timeout=30)
            if helper.is_alive():
                helper.terminate()
                helper.join()


def _grads(model: nn.Module, params: list[nn.Parameter], task: ShardTask, shard: int) -> list[Tensor | None]:
    return list(torch.autograd.grad(task.loss(model, shard), params, allow_unused=True))


def _flat(grads: list[Tensor | None], params: list[nn.Parameter]) -> Tensor:
    return torch.cat([(torch.zeros_like(p) if g is None else g).reshape(-1) for g, p in zip(grads, params)])


def _helper(model: nn.Module, task: ShardTask, shard: int, weights: Tensor, out: Tensor, barrier, stop, threads: int) -> None:
    """Each step: wait for the weights, compute shard ``shard``'s gradient at them into ``out``."""
    torch.set_num_threads(threads)
    params = [p for p in model.parameters() if p.requires_grad]
    for p, w in zip(params, weights.split([p.numel() for p in params])):
        p.data = w.view_as(p)  # views: each step's weights arrive with no copy here
    try:
        while True:
            barrier.wait()
            if stop.is_set():
                return
            task.advance()
            out.copy_(_flat(_grads(model, params, task, shard), params))
            barrier.wait()
    except (threading.BrokenBarrierError, KeyboardInterrupt):
        return  # the main process stopped or was interrupted: it reports why
    except BaseException:
        barrier.abort()
        raise
