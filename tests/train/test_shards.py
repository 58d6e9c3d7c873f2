"""Sharded gradients: the batch's gradient, the same bits with helper processes as without."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from didr.train.shards import ShardedGradients


class LinearTask:
    """Least squares on a fixed data set, a batch of rows drawn per step from ``seed``."""

    def __init__(self, shards: int, seed: int = 0, fail_in: int | None = None):
        g = torch.Generator().manual_seed(123)
        self.x, self.y = torch.randn(64, 5, generator=g), torch.randn(64, 3, generator=g)
        self.shards, self.seed, self.fail_in, self.gen = shards, seed, fail_in, None

    def advance(self) -> None:
        if self.gen is None:
            self.gen = torch.Generator().manual_seed(self.seed)
        self.rows = torch.randint(0, 64, (12,), generator=self.gen)

    def loss(self, model: nn.Module, shard: int) -> torch.Tensor:
        if shard == self.fail_in:
            raise ValueError("this shard fails")
        rows = self.rows.tensor_split(self.shards)[shard]
        return ((model(self.x[rows]) - self.y[rows]) ** 2).mean() * (len(rows) / len(self.rows))


def _model() -> nn.Module:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 8), nn.Tanh(), nn.Linear(8, 3), nn.Linear(3, 3))
    model[3].requires_grad_(False)  # a frozen layer: not among the sharded parameters
    return model


def _train(shards: int, jobs: int, steps: int = 5) -> torch.Tensor:
    model = _model()
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=0.05)
    with ShardedGradients(model, LinearTask(shards), shards, jobs) as grads:
        for _ in range(steps):
            opt.zero_grad(set_to_none=True)
            grads.compute()
            opt.step()
    return torch.nn.utils.parameters_to_vector(model.parameters())


def test_one_shard_is_the_plain_gradient():
    model, task = _model(), LinearTask(1)
    with ShardedGradients(model, task, 1) as grads:
        grads.compute()
    sharded = [p.grad.clone() for p in model.parameters() if p.requires_grad]
    model.zero_grad(set_to_none=True)
    task.gen = None
    task.advance()
    ((model(task.x[task.rows]) - task.y[task.rows]) ** 2).mean().backward()
    for s, p in zip(sharded, [p for p in model.parameters() if p.requires_grad]):
        assert torch.equal(s, p.grad)
    assert model[3].weight.grad is None


def test_shards_sum_to_the_batch_gradient():
    assert torch.allclose(_train(3, 1), _train(1, 1), atol=1e-6)
    assert not torch.allclose(_train(1, 1), torch.nn.utils.parameters_to_vector(_model().parameters()), atol=1e-3)  # the weights did move


def test_helper_processes_give_the_same_bits():
    assert torch.equal(_train(2, 2), _train(2, 1))
    assert torch.equal(_train(3, 3, steps=3), _train(3, 1, steps=3))


def test_a_failing_helper_stops_the_step_with_a_clear_error():
    model = _model()
    with pytest.raises(RuntimeError, match="gradient-shard helper process stopped"):
        with ShardedGradients(model, LinearTask(2, fail_in=1), 2, jobs=2) as grads:
            grads.compute()


def test_fewer_processes_than_shards_run_here():
    grads = ShardedGradients(_model(), LinearTask(3), 3, jobs=2)
    assert not grads.parallel
    with pytest.raises(ValueError, match="shards"):
        ShardedGradients(_model(), LinearTask(1), 0)
