"""Several processes on CPU: torchrun with gloo through accelerate, as users launch it.

The run's own log must state world_size=2 (a launch that silently starts one process, or two
unsynchronised ones, is the failure these tests exist to catch) and that the generator is
bit-identical on both processes after training.
"""

from __future__ import annotations

import re

import pytest
import torch

from didr.models.mlp import MLPGenerator
from didr.train.distributed import Prepared, any_rank, make_accelerator, reduce_logs, same_on_all_ranks
from safetensors.torch import load_file
from train_helpers import TOY, didr_cmd, exported, run, sets, torchrun_cmd


def _start_line(out) -> str:
    return next(line for line in (out / "train.log").read_text().splitlines() if " start: " in line)


def test_two_processes_train_in_step(tmp_path):
    out = tmp_path / "ddp"
    proc = run(torchrun_cmd(2, "train", TOY, "--out", str(out), *sets("train.checkpoint_every=10")), timeout=180)
    assert proc.returncode == 0, proc.stderr[-3000:]
    start = _start_line(out)
    assert "world_size=2 distributed_type=MULTI_CPU backend=gloo" in start and "effective batch 128" in start
    assert "generator identical on all 2 processes" in (out / "train.log").read_text()
    final = out / "checkpoints" / "step-00000020"
    rng = [torch.load(final / f"rng-rank{r:05d}.pt", weights_only=True)["torch"] for r in (0, 1)]
    assert not torch.equal(rng[0], rng[1])  # each process draws its own noise
    assert proc.stdout.count('"pstar"') == 1  # only the main process reports


@pytest.mark.slow
def test_two_processes_match_one_with_the_doubled_batch(tmp_path):
    """2 x 256 samples per step on two processes lands where 512 on one does, up to sampling noise:
    the distance between the two generators is small next to how far training moved them."""
    common = sets("train.steps=30", "train.ta_updates=2")
    two = run(torchrun_cmd(2, "train", TOY, "--out", str(tmp_path / "two"), *common, "--set", "train.batch_size=256"), timeout=300)
    assert two.returncode == 0, two.stderr[-3000:]
    one = run(didr_cmd("train", TOY, "--out", str(tmp_path / "one"), *common, "--set", "train.batch_size=512"), timeout=300)
    assert one.returncode == 0, one.stderr[-3000:]
    assert "world_size=2" in _start_line(tmp_path / "two") and "world_size=1" in _start_line(tmp_path / "one")

    def outputs(weights):
        g = MLPGenerator(1, 32, 3)
        g.load_state_dict(weights)
        with torch.no_grad():
            return g(torch.randn(4096, 1, generator=torch.Generator().manual_seed(0)))

    init = outputs(load_file(str(tmp_path / "one" / "stages" / "generator_init_trained.safetensors")))
    x_two, x_one = outputs(exported(tmp_path / "two")), outputs(exported(tmp_path / "one"))
    moved = (x_one - init).abs().mean()
    assert moved > 0.2
    assert (x_two - x_one).abs().mean() < 0.35 * moved


def test_single_process_helpers():
    acc = make_accelerator()
    assert acc.num_processes == 1
    assert any_rank(acc, True) and not any_rank(acc, False)
    assert reduce_logs(acc, {"a": 1.5}) == {"a": 1.5}
    g = MLPGenerator(1, 8, 2)
    assert same_on_all_ranks(acc, g)[0]
    assert re.fullmatch(r"[0-9a-f]{64}", same_on_all_ranks(acc, g)[1])

    class Wrapper(torch.nn.Module):  # stands in for DDP: hides the module's attributes
        def __init__(self, m):
            super().__init__()
            self.module = m

        def forward(self, *a):
            return self.module(*a) * 2

    p = Prepared(Wrapper(g), g)
    g.schedule = "s"
    z = torch.randn(3, 1)
    assert p.schedule == "s" and torch.equal(p(z), g(z) * 2)


@pytest.mark.slow
def test_two_processes_stopped_and_resumed_match_an_uninterrupted_run(tmp_path):
    """SIGTERM to torchrun reaches both processes; they agree on the step, save one checkpoint
    (with both RNG states) and exit; a 2-process --resume then ends bit-identical."""
    import signal
    import subprocess
    import time

    from train_helpers import ROOT, assert_bit_identical, subprocess_env

    args = sets("train.steps=60", "train.checkpoint_every=10")
    whole = run(torchrun_cmd(2, "train", TOY, "--out", str(tmp_path / "whole"), *args), timeout=300)
    assert whole.returncode == 0, whole.stderr[-3000:]
    out = tmp_path / "split"
    proc = subprocess.Popen(torchrun_cmd(2, "train", TOY, "--out", str(out), *args), cwd=ROOT, env=subprocess_env(), stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 200
    while not list((out / "checkpoints").glob("step-*")) and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.3)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode != 0 and "stopped by SIGTERM at step" in err, err[-3000:]
    resumed = run(torchrun_cmd(2, "train", TOY, "--out", str(out), *args, "--resume"), timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "(resumed from step-" in (out / "train.log").read_text()
    assert_bit_identical(exported(tmp_path / "whole"), exported(out))
