"""The Trainer in one process: logs, exact resume, guards, accumulation, schedules, signals."""

from __future__ import annotations

import json
import math
import os
import signal

import pytest
import torch

from didr.errors import CheckpointError, RewardError
from didr.train.config import TrainConfig
from didr.train.loop import Trainer, TrainingError
from didr.train.optim import lr_factor
from didr.train.signals import Interrupted
from tests.helpers import assert_bit_identical, exported, tiny_alignment, tiny_config


def test_run_writes_log_metrics_checkpoints_and_export(tmp_path):
    trainer = Trainer(tiny_alignment(), tiny_config(checkpoint_every=2, keep_checkpoints=2), tmp_path)
    trainer.run()
    log = (tmp_path / "train.log").read_text()
    assert "world_size=1" in log and "generator identical on all 1 processes" in log
    steps = [json.loads(line)["step"] for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert steps == [2, 4, 6]
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["step-00000004", "step-00000006"]
    weights = exported(tmp_path)
    assert_bit_identical(weights, {k: v for k, v in trainer.a.generator.state_dict().items()})
    info = json.loads((tmp_path / "export" / "generator.json").read_text())
    assert info["step"] == 6 and info["config"]["train"]["steps"] == 6


def _stop_at(step):
    return lambda s, logs: os.kill(os.getpid(), signal.SIGTERM) if s == step else None


@pytest.mark.parametrize("ema", [0.0, 0.9])
def test_resume_after_a_stop_is_bit_identical(tmp_path, ema):
    """Stopped at step 4 and resumed to 8, a run ends with exactly the uninterrupted run's weights,
    TA and EMA included: weights, optimisers, the cosine schedule and RNG states are all restored."""
    cfg = tiny_config(steps=8, checkpoint_every=3, ema_decay=ema, lr_warmup=3, lr_schedule="cosine", grad_clip=1.0, log_every=2)
    whole = Trainer(tiny_alignment(), cfg, tmp_path / "whole")
    whole.run()
    with pytest.raises(Interrupted):
        Trainer(tiny_alignment(), cfg, tmp_path / "split").run(on_log=_stop_at(4))
    fresh = tiny_alignment()
    with torch.no_grad():  # whatever the experiment hands over, the checkpoint's weights win
        for p in [*fresh.generator.parameters(), *fresh.ta.parameters()]:
            p.add_(1.0)
    resumed = Trainer(fresh, cfg, tmp_path / "split", resume=True)
    assert resumed.step_count == 4
    resumed.run()
    assert_bit_identical(exported(tmp_path / "whole"), exported(tmp_path / "split"))
    assert_bit_identical(whole.a.ta.state_dict(), resumed.a.ta.state_dict())
    steps = [json.loads(x)["step"] for x in (tmp_path / "split" / "metrics.jsonl").read_text().splitlines()]
    assert steps == [2, 4, 6, 8]  # no duplicated records after the resume


def test_resume_with_more_steps_continues_exactly(tmp_path):
    """A finished run resumed with more steps (a compatible change) equals one long run."""
    cfg = dict(lr_warmup=2, grad_accum=2)
    Trainer(tiny_alignment(), tiny_config(steps=6, **cfg), tmp_path / "whole").run()
    Trainer(tiny_alignment(), tiny_config(steps=3, **cfg), tmp_path / "split").run()
    Trainer(tiny_alignment(), tiny_config(steps=6, **cfg), tmp_path / "split", resume=True).run()
    assert_bit_identical(exported(tmp_path / "whole"), exported(tmp_path / "split"))


def test_resume_without_checkpoints_starts_from_zero(tmp_path):
    trainer = Trainer(tiny_alignment(), tiny_config(steps=2), tmp_path, resume=True)
    assert trainer.step_count == 0
    assert "starting from step 0" in (tmp_path / "train.log").read_text()


def test_resume_refuses_changed_settings(tmp_path):
    Trainer(tiny_alignment(), tiny_config(steps=2), tmp_path).run()
    with pytest.raises(CheckpointError, match=r"train\.lr_generator changed"):
        Trainer(tiny_alignment(), tiny_config(steps=4, lr_generator=5e-3), tmp_path, resume=True)
    # more steps and another log interval are fine
    assert Trainer(tiny_alignment(), tiny_config(steps=4, log_every=1), tmp_path, resume=True).step_count == 2


class FlakyReward:
    """sigmoid(4x), but NaN on the calls listed in ``bad`` (counting from 0)."""

    name = "flaky"

    def __init__(self, bad):
        self.bad, self.calls = set(bad), 0

    def __call__(self, x, prompts=None):
        r = torch.sigmoid(4 * x[:, 0])
        self.calls += 1
        return r * float("nan") if self.calls - 1 in self.bad else r


def test_nonfinite_reward_skips_the_step_and_counts_it(tmp_path):
    reward = FlakyReward(bad={1})
    trainer = Trainer(tiny_alignment(reward=reward, method="dipp"), tiny_config(steps=4, log_every=1), tmp_path)
    before = {k: v.clone() for k, v in trainer.a.generator.state_dict().items()}
    trainer.step()  # fine
    mid = {k: v.clone() for k, v in trainer.a.generator.state_dict().items()}
    assert any(not torch.equal(before[k], mid[k]) for k in before)
    logs = trainer.step()  # NaN reward: skipped, weights untouched
    assert logs["bad_steps"] == 1 and trainer.bad_in_a_row == 1
    assert_bit_identical(mid, trainer.a.generator.state_dict())
    trainer.step()
    assert trainer.bad_in_a_row == 0 and trainer.bad_total == 1
    assert "skipped" in (tmp_path / "train.log").read_text() and "non-finite" in (tmp_path / "train.log").read_text()


def test_too_many_bad_steps_in_a_row_stop_the_run(tmp_path):
    reward = FlakyReward(bad=range(100))
    trainer = Trainer(tiny_alignment(reward=reward, method="dipp"), tiny_config(steps=10, max_bad_steps=3), tmp_path)
    with pytest.raises(TrainingError, match=r"3 steps in a row had NaN or inf \(train.max_bad_steps = 3\).*flaky"):
        trainer.run()
    assert trainer.step_count == 3


def test_wrong_reward_shape_stops_at_once():
    shape = lambda x, prompts=None: torch.sigmoid(x)  # (B, 1) instead of (B,)  # noqa: E731
    trainer = Trainer(tiny_alignment(reward=shape, method="dipp"), tiny_config(steps=3))
    with pytest.raises(RewardError, match=r"returned shape \(16, 1\), expected \(16,\)"):
        trainer.run()


def test_nonfinite_gradient_is_skipped():
    trainer = Trainer(tiny_alignment(method="di"), tiny_config(steps=3))
    before = {k: v.clone() for k, v in trainer.a.generator.state_dict().items()}
    hook = next(trainer.a.generator.parameters()).register_hook(lambda g: g * float("inf"))
    trainer.step()
    hook.remove()
    assert trainer.bad_total == 1 and "gradient is NaN or inf" in trainer.problem
    assert_bit_identical(before, trainer.a.generator.state_dict())


class PoisonedReference(torch.nn.Module):
    """The reference, with NaN outputs while ``armed``."""

    def __init__(self, base):
        super().__init__()
        self.base, self.schedule, self.armed = base, base.schedule, False

    def forward(self, x_t, t, cond=None):
        out = self.base(x_t, t, cond)
        return out * float("nan") if self.armed else out


def test_nonfinite_reference_skips_the_step_and_names_it(tmp_path):
    """A NaN in the target score is not a zero push: the step is skipped, counted and logged with
    its source."""
    alignment = tiny_alignment(method="di")
    alignment.reference = PoisonedReference(alignment.reference)
    trainer = Trainer(alignment, tiny_config(steps=4, log_every=1), tmp_path)
    trainer.step()
    before = {k: v.clone() for k, v in trainer.a.generator.state_dict().items()}
    alignment.reference.armed = True
    logs = trainer.step()
    assert logs["bad_steps"] == 1 and trainer.bad_total == 1
    assert_bit_identical(before, trainer.a.generator.state_dict())
    alignment.reference.armed = False
    trainer.step()
    assert trainer.bad_in_a_row == 0 and trainer.bad_total == 1
    line = next(x for x in (tmp_path / "train.log").read_text().splitlines() if "skipped" in x)
    assert "step 2 skipped" in line and "reference" in line and "NaN" in line


@pytest.mark.parametrize("choice", ["native", "x0"])
def test_ta_steps_use_the_configured_weighting(monkeypatch, choice):
    from didr.diffusion import losses
    from didr.train import loop

    seen = []

    def spy(denoiser, x0, t, cond=None, **kw):
        seen.append(kw.get("weighting"))
        return losses.dsm_loss(denoiser, x0, t, cond, **kw)

    monkeypatch.setattr(loop, "dsm_loss", spy)
    trainer = Trainer(tiny_alignment(), tiny_config(steps=1, ta_weighting=choice))
    trainer.step()
    assert seen and all(w is losses.dsm_weighting(choice) for w in seen)
    assert (seen[0] is None) == (choice == "native")


class Quadratic:
    """A deterministic objective, ((x0 - 1)^2).mean(), with no TA: accumulation is checkable exactly."""

    uses_ta = False
    name = "quadratic"

    def __call__(self, x0, cond, ref, ta, z=None):
        return ((x0 - 1) ** 2).mean(), {}


def test_grad_accumulation_equals_the_larger_batch():
    pool = torch.linspace(-2, 2, 16).reshape(16, 1)

    def inputs_from_pool():
        pos = [0]

        def sample(n):
            out = pool[pos[0] : pos[0] + n]
            pos[0] = (pos[0] + n) % len(pool)
            return out, None

        return sample

    results = []
    for batch, accum in ((16, 1), (8, 2), (4, 4)):
        a = tiny_alignment(sample_inputs=inputs_from_pool())
        a.objective = Quadratic()
        trainer = Trainer(a, tiny_config(steps=1, batch_size=batch, grad_accum=accum, ta_updates=0, adam_beta1=0.9))
        trainer.run()
        results.append(torch.cat([p.detach().flatten() for p in a.generator.parameters()]))
    torch.testing.assert_close(results[1], results[0], rtol=0, atol=1e-6)
    torch.testing.assert_close(results[2], results[0], rtol=0, atol=1e-6)


def test_lr_schedule():
    cfg = TrainConfig(steps=10, lr_warmup=4, lr_schedule="cosine")
    assert [lr_factor(s, cfg) for s in range(4)] == [0.25, 0.5, 0.75, 1.0]
    assert lr_factor(4, cfg) == 1.0 and lr_factor(7, cfg) == pytest.approx(0.5) and lr_factor(10, cfg) == pytest.approx(0.0)
    assert lr_factor(5, TrainConfig(steps=10)) == 1.0
    trainer = Trainer(tiny_alignment(), tiny_config(steps=2, lr_warmup=4))
    trainer.run()
    assert trainer.opt_g.param_groups[0]["lr"] == pytest.approx(1e-3 * 0.75)


def test_bf16_mixed_precision_runs_on_cpu():
    trainer = Trainer(tiny_alignment(), tiny_config(steps=2, mixed_precision="bf16"))
    logs = trainer.run()
    assert trainer.acc.mixed_precision == "bf16" and math.isfinite(logs["generator_loss"])


def test_sigterm_saves_a_checkpoint_then_stops(tmp_path):
    trainer = Trainer(tiny_alignment(), tiny_config(steps=20, log_every=1), tmp_path)
    handler = signal.getsignal(signal.SIGTERM)
    with pytest.raises(Interrupted, match=r"stopped by SIGTERM at step 3; checkpoint saved"):
        trainer.run(on_log=lambda step, logs: os.kill(os.getpid(), signal.SIGTERM) if step == 3 else None)
    assert (tmp_path / "checkpoints" / "step-00000003" / "state.json").is_file()
    assert signal.getsignal(signal.SIGTERM) is handler  # the previous handler is back
    assert Trainer(tiny_alignment(), tiny_config(steps=20), tmp_path, resume=True).step_count == 3


def test_accumulated_micro_batches_each_draw_from_their_own_stream(tmp_path):
    """With grad_accum 2 the two micro-batches of a step draw from two streams, each saved in the
    checkpoint; a stop and resume stays bit-identical."""
    cfg = tiny_config(steps=6, checkpoint_every=3, grad_accum=2)
    Trainer(tiny_alignment(), cfg, tmp_path / "whole").run()
    with pytest.raises(Interrupted):
        Trainer(tiny_alignment(), cfg, tmp_path / "split").run(on_log=_stop_at(4))
    files = sorted(p.name for p in (tmp_path / "split" / "checkpoints" / "step-00000004").iterdir())
    assert files == ["rng-slot00000.pt", "rng-slot00001.pt", "state.json", "tensors-rank00000.safetensors"]
    Trainer(tiny_alignment(), cfg, tmp_path / "split", resume=True).run()
    assert_bit_identical(exported(tmp_path / "whole"), exported(tmp_path / "split"))


def test_a_run_whose_every_step_is_skipped_fails(tmp_path):
    """Fewer steps than max_bad_steps, all with a NaN reward: the run must not end as a success."""
    nan = lambda x, prompts=None: x[:, 0] * float("nan")  # noqa: E731
    trainer = Trainer(tiny_alignment(reward=nan, method="dipp"), tiny_config(steps=3, max_bad_steps=10), tmp_path)
    with pytest.raises(RewardError, match=r"all 3 steps of the run had NaN or inf; last: reward '<lambda>' returned 16 non-finite"):
        trainer.run()
    assert not (tmp_path / "export").exists()


def test_progress_off_a_terminal_is_plain_lines(tmp_path, capsys):
    """Under nohup or a scheduler, the bar would write a carriage-return update per step."""
    Trainer(tiny_alignment(), tiny_config(steps=4, progress=True), tmp_path).run()
    err = capsys.readouterr().err
    assert "\r" not in err
    assert any(line.startswith("train: 4/4 (100%)") for line in err.splitlines()), err
