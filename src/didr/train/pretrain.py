"""The one pre-training loop: Adam on a task's batch gradients, with an optional cosine decay and EMA.

Every network an experiment prepares before alignment trains here: the toy's and the digits'
reference (DSM, M5), the initial generator's regression onto teacher samples, and the digit reward
models. A task draws its batches and computes their loss (:class:`didr.train.shards.ShardTask`);
its gradient may be split into shards computed in parallel processes, with the same bits for any
number of processes (:mod:`didr.train.shards`).

    pretrain(net, task, steps=2000, lr=1e-3, desc="reference (DSM)")
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from didr.progress import progress as progress_bar
from didr.train.ema import EMA
from didr.train.shards import ShardedGradients, ShardTask


def pretrain(model: nn.Module, task: ShardTask, *, steps: int, lr: float, lr_floor: float | None = 0.05, shards: int = 1, jobs: int = 1,
             ema: EMA | None = None, desc: str = "pre-training", progress: bool = True) -> None:
    """``steps`` Adam updates of ``model`` on ``task``'s batch gradients, summed over ``shards``.

    ``lr_floor``: the learning rate decays along a cosine to ``lr_floor * lr`` at the last step
    (None: constant). ``ema``: updated after every step with a short warm-up (decay min(d, k / (k + 10))
    at step k), so that the first weights fade fast. Adam runs its ``foreach`` update: the per-tensor
    update's bits, faster on a CPU.
    """
    opt = torch.optim.Adam(model.parameters(), lr=lr, foreach=True)
    sched = None if lr_floor is None else torch.optim.lr_scheduler.CosineAnnealingLR(opt, max(steps, 1), eta_min=lr * lr_floor)
    with ShardedGradients(model, task, shards, jobs) as grads:
        for step in progress_bar(range(steps), desc, enabled=progress):
            opt.zero_grad(set_to_none=True)
            grads.compute()
            opt.step()
            if sched is not None:
                sched.step()
            if ema is not None:
                ema.update(model, min(ema.decay, step / (step + 10)))


@dataclass
class Regression:
    """Matched-noise regression of a generator onto a pool of teacher samples: each batch is rows of
    the pool ``{"z", "x"}`` (and ``"c"``, mapped to the generator's conditioning by ``cond``), drawn
    from ``seed``, or from ``generator`` to continue a stream the caller started; the loss is the
    mean squared error g(z, c) - x, each shard contributing its share of the batch mean."""

    pool: dict[str, Tensor]
    batch: int
    shards: int = 1
    seed: int = 0
    generator: torch.Generator | None = None  # not picklable: only for unsharded tasks
    cond: object = None  # c -> the generator's conditioning (e.g. prompt indices -> embeddings)

    def __post_init__(self):
        self.rows = torch.empty(0, dtype=torch.long)

    def advance(self) -> None:
        if self.generator is None:
            self.generator = torch.Generator().manual_seed(self.seed)
        self.rows = torch.randint(0, len(self.pool["z"]), (self.batch,), generator=self.generator)

    def loss(self, model: nn.Module, shard: int) -> Tensor:
        rows = self.rows.tensor_split(self.shards)[shard]
        z, x = self.pool["z"][rows], self.pool["x"][rows]
        out = model(z) if self.cond is None else model(z, self.cond(self.pool["c"][rows]))
        return ((out - x) ** 2).mean() * (len(rows) / self.batch)  # x 1.0 exactly with one shard

    def __getstate__(self):
        if self.generator is not None and self.shards > 1:
            raise TypeError("a Regression with a shared generator cannot be sent to shard processes; give it a seed")
        return {**self.__dict__, "generator": None}
