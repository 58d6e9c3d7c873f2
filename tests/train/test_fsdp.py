"""FSDP2 in the loop on two gloo processes (forked, in-process): what each process holds, the match
with one process accumulating the same global batch, checkpoints resumed on 2, 1 and 2 processes,
and the launch settings didr refuses."""

from __future__ import annotations

import json

import pytest
import torch

from didr.errors import ConfigError
from didr.train.fsdp import ShardingPlan, held_numel, plan_from_launch
from didr.train.loop import Trainer
from tests.gloo_ranks import on_two_gloo_ranks, rank_accelerator
from tests.helpers import assert_bit_identical, exported, tiny_alignment, tiny_config

#: one process with grad_accum 2 sums the same micro-batches' gradients as two processes, in another order
SAME_BATCH_ATOL = 1e-5


def sharded_run(out, method="didr", **cfg):
    """A fork target: a 2-process FSDP2 run of the tiny alignment; returns this process's share of each network."""

    def on_rank(rank):
        trainer = Trainer(tiny_alignment(method=method), tiny_config(**cfg), out, accelerator=rank_accelerator(), sharding=ShardingPlan(),
                          resume=True)
        trainer.run()
        return [held_numel(net.parameters()) for net in trainer.sharded.networks]

    return on_two_gloo_ranks(on_rank)


def metrics(out):
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def assert_close_runs(a, b, atol=SAME_BATCH_ATOL):
    wa, wb = exported(a), exported(b)
    assert wa.keys() == wb.keys()
    for k in wa:
        torch.testing.assert_close(wa[k], wb[k], rtol=0, atol=atol)
    by_step = {m["step"]: m for m in metrics(b)}
    common = [m for m in metrics(a) if m["step"] in by_step]
    assert common
    for ma in common:
        for k in {"generator_loss", "ta_loss"} & ma.keys():
            assert ma[k] == pytest.approx(by_step[ma["step"]][k], rel=1e-5, abs=1e-6), (ma["step"], k)


def test_two_sharded_processes_hold_half_and_match_one_process_with_the_same_global_batch(tmp_path):
    held = sharded_run(tmp_path / "two", steps=6, checkpoint_every=3, log_every=1)
    for rank_share in held:
        for mine, total in rank_share:
            assert 0.3 < mine / total < 0.7
    for net in range(3):  # generator, TA, reference: every element is held by exactly one process
        assert held[0][net][0] + held[1][net][0] == held[0][net][1]
    log = (tmp_path / "two" / "train.log").read_text()
    assert "world_size=2 parallelism=fsdp2 backend=gloo" in log and "sharded over 2 processes; parameters held: network 0" in log
    Trainer(tiny_alignment(), tiny_config(steps=6, grad_accum=2, log_every=1), tmp_path / "one").run()
    assert_close_runs(tmp_path / "two", tmp_path / "one")


@pytest.mark.parametrize("method", ["di", "dipp", "dmd", "dmdr", "refl"])
def test_every_method_trains_sharded_as_one_process_does(tmp_path, method):
    sharded_run(tmp_path / "two", method=method, steps=3, log_every=1)
    Trainer(tiny_alignment(method=method), tiny_config(steps=3, grad_accum=2, log_every=1), tmp_path / "one").run()
    assert_close_runs(tmp_path / "two", tmp_path / "one")


def test_sharded_checkpoints_resume_exactly_and_on_another_number_of_processes(tmp_path):
    """To step 3, then on to 6: on two processes bit-identical to the uninterrupted run; on one
    process accumulating two micro-batches (and back) the same up to the order of sums."""
    sharded_run(tmp_path / "whole", steps=6)
    sharded_run(tmp_path / "two-two", steps=3)
    sharded_run(tmp_path / "two-two", steps=6)
    assert_bit_identical(exported(tmp_path / "whole"), exported(tmp_path / "two-two"))

    sharded_run(tmp_path / "two-one", steps=3)
    Trainer(tiny_alignment(), tiny_config(steps=6, grad_accum=2), tmp_path / "two-one", resume=True).run()
    assert "saved with 2 process(es) x 1 micro-batch(es), now 1 x 2: the same global batch" in (tmp_path / "two-one" / "train.log").read_text()
    assert_close_runs(tmp_path / "whole", tmp_path / "two-one")

    Trainer(tiny_alignment(), tiny_config(steps=3, grad_accum=2), tmp_path / "one-two").run()
    sharded_run(tmp_path / "one-two", steps=6)
    assert_close_runs(tmp_path / "whole", tmp_path / "one-two")


@pytest.mark.parametrize("env, message", [
    ({"FSDP_VERSION": "1"}, "FSDP version 1; didr shards with FSDP2"),
    ({"FSDP_OFFLOAD_PARAMS": "true"}, "fsdp_offload_params: CPU offload"),
    ({"FSDP_STATE_DICT_TYPE": "FULL_STATE_DICT"}, "fsdp_state_dict_type is FULL_STATE_DICT"),
    ({"FSDP_AUTO_WRAP_POLICY": "SIZE_BASED_WRAP"}, "fsdp_auto_wrap_policy is SIZE_BASED_WRAP"),
    ({"FSDP_ACTIVATION_CHECKPOINTING": "true"}, "backbone.gradient_checkpointing"),
    ({"FSDP_CPU_RAM_EFFICIENT_LOADING": "true"}, "loads the networks whole before sharding"),
])
def test_fsdp_settings_didr_does_not_implement_are_refused_by_name(monkeypatch, env, message):
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")
    monkeypatch.setenv("FSDP_VERSION", "2")
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    with pytest.raises(ConfigError, match=message):
        plan_from_launch()


def test_the_presets_plan(monkeypatch):
    assert plan_from_launch() is None
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")
    monkeypatch.setenv("FSDP_VERSION", "2")
    monkeypatch.setenv("FSDP_RESHARD_AFTER_FORWARD", "false")
    monkeypatch.setenv("FSDP_TRANSFORMER_CLS_TO_WRAP", "BasicTransformerBlock, ResnetBlock2D")
    assert plan_from_launch() == ShardingPlan(reshard_after_forward=False, block_classes=("BasicTransformerBlock", "ResnetBlock2D"))


def test_what_sharding_cannot_hold_is_refused_by_name():
    def on_rank(rank):
        errors = []
        for cfg in (dict(ema_decay=0.9), dict(mixed_precision="fp16")):
            try:
                Trainer(tiny_alignment(), tiny_config(**cfg), accelerator=rank_accelerator(), sharding=ShardingPlan())
            except ConfigError as err:
                errors.append(str(err))
        return errors

    for errors in on_two_gloo_ranks(on_rank):
        assert len(errors) == 2 and errors[0].startswith("train.ema_decay: the EMA needs whole weights")
        assert errors[1].startswith("train.mixed_precision: fp16's grad scaler")


def test_a_bf16_frozen_base_with_float32_adapters_trains_sharded_under_bf16_autocast():
    """A unit mixing storage dtypes (a LoRA over a bf16 base) is gathered as bytes; the run's bf16
    autocast applies as without sharding, and the adapters' gradients come back whole-model averaged."""
    from torch import nn

    from didr.train.fsdp import Sharded, grad_norm

    class Adapted(nn.Module):
        def __init__(self):
            super().__init__()
            self.base = nn.Linear(8, 8).to(torch.bfloat16).requires_grad_(False)
            self.down, self.up = nn.Linear(8, 2, bias=False), nn.Linear(2, 8, bias=False)

        def forward(self, x):
            return self.base(x) + self.up(self.down(x))

    def on_rank(rank):
        torch.manual_seed(0)
        net = Adapted()
        Sharded([net], [net], ShardingPlan(), torch.device("cpu"))
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = net(torch.randn(4, 8, generator=torch.Generator().manual_seed(rank))).float().pow(2).mean()
        loss.backward()
        trained = [p for p in net.parameters() if p.requires_grad]
        return float(loss), float(grad_norm(trained, float("inf"))), [p.dtype for p in net.parameters()]

    (loss0, norm0, dtypes), (loss1, norm1, _) = on_two_gloo_ranks(on_rank)
    assert dtypes == [torch.bfloat16, torch.bfloat16, torch.float32, torch.float32]
    assert norm0 == norm1 > 0 and loss0 != loss1  # each process its own batch, one averaged gradient
