"""The one pre-training loop: the plain Adam loop it replaced, bit for bit; shards that add up to the
batch; the cosine decay to its floor; the EMA's warm-up."""

import copy

import pytest
import torch
from torch import nn
from torch.optim.optimizer import register_optimizer_step_post_hook

from didr.train.ema import EMA
from didr.train.pretrain import Regression, pretrain


def pool(n=64, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return {"z": torch.randn(n, 3, generator=gen), "x": torch.randn(n, 2, generator=gen)}


def net(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(3, 16), nn.Tanh(), nn.Linear(16, 2))


def test_one_shard_is_the_plain_adam_loop_bit_for_bit():
    data, steps = pool(), 7
    ours, theirs = net(), net()
    pretrain(ours, Regression(data, batch=16, seed=3), steps=steps, lr=1e-2, progress=False)
    gen = torch.Generator().manual_seed(3)
    opt = torch.optim.Adam(theirs.parameters(), lr=1e-2)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps, eta_min=1e-2 * 0.05)
    for _ in range(steps):
        rows = torch.randint(0, 64, (16,), generator=gen)
        loss = ((theirs(data["z"][rows]) - data["x"][rows]) ** 2).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
    for a, b in zip(ours.parameters(), theirs.parameters()):
        assert torch.equal(a, b)


def test_shards_add_up_to_the_batch():
    data = pool()
    one, two = Regression(data, batch=16, shards=1, seed=1), Regression(data, batch=16, shards=2, seed=1)
    one.advance()
    two.advance()
    model = net()
    torch.testing.assert_close(two.loss(model, 0) + two.loss(model, 1), one.loss(model, 0))
    with pytest.raises(TypeError, match="seed"):
        copy.deepcopy(Regression(data, batch=16, shards=2, generator=torch.Generator()))  # a stream cannot reach shard processes


def test_the_learning_rate_decays_to_its_floor_or_stays():
    seen = {0.05: [], None: []}
    for floor, lrs in seen.items():
        handle = register_optimizer_step_post_hook(lambda opt, a, k, lrs=lrs: lrs.append(opt.param_groups[0]["lr"]))
        try:
            pretrain(net(), Regression(pool(), batch=8), steps=5, lr=0.1, lr_floor=floor, progress=False)
        finally:
            handle.remove()
    assert seen[None] == [0.1] * 5
    assert seen[0.05][0] == 0.1 and all(a > b for a, b in zip(seen[0.05], seen[0.05][1:])) and seen[0.05][-1] > 0.005


def test_the_ema_starts_fast_then_holds_its_decay():
    model, steps = net(), 6
    ema = EMA(model, 0.9)
    start = [p.detach().clone() for p in model.parameters()]
    snapshots = []
    handle = register_optimizer_step_post_hook(lambda opt, a, k: snapshots.append([p.detach().clone() for p in model.parameters()]))
    try:
        pretrain(model, Regression(pool(), batch=8), steps=steps, lr=0.05, ema=ema, progress=False)
    finally:
        handle.remove()
    expected = start
    for step, weights in enumerate(snapshots):
        d = min(0.9, step / (step + 10))
        expected = [e * d + w * (1 - d) for e, w in zip(expected, weights)]
    for e, p in zip(expected, ema.module.parameters()):
        torch.testing.assert_close(p, e)
