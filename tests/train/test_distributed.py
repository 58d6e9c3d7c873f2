"""Several processes on CPU: torchrun with gloo through accelerate, as users launch it.

The run's own log must state world_size=2 (a launch that silently starts one process, or two
unsynchronised ones, is the failure these tests exist to catch) and that the generator is
bit-identical on both processes after training.
"""

from __future__ import annotations

import re

import pytest
import torch
from safetensors.torch import load_file

from didr.models.mlp import MLPGenerator
from didr.train.distributed import Prepared, any_rank, make_accelerator, reduce_logs, same_on_all_ranks
from tests.gloo_ranks import on_two_gloo_ranks
from tests.helpers import ROOT, TOY, didr_cmd, exported, run, sets, torchrun_cmd


def _start_line(out) -> str:
    return next(line for line in (out / "train.log").read_text().splitlines() if " start: " in line)


def test_two_processes_train_in_step(tmp_path):
    out = tmp_path / "ddp"
    proc = run(torchrun_cmd(2, "train", TOY, "--out", str(out), *sets("train.checkpoint_every=10")), timeout=180)
    assert proc.returncode == 0, proc.stderr[-3000:]
    start = _start_line(out)
    assert "world_size=2 parallelism=ddp backend=gloo" in start and "effective batch 128" in start
    assert "generator identical on all 2 processes" in (out / "train.log").read_text()
    final = out / "checkpoints" / "step-00000020"
    rng = [torch.load(final / f"rng-slot{r:05d}.pt", weights_only=True)["torch"] for r in (0, 1)]
    assert not torch.equal(rng[0], rng[1])  # each process draws its own noise
    assert proc.stdout.count('"pstar"') == 1  # only the main process reports


@pytest.mark.slow
def test_two_processes_match_one_accumulating_the_same_global_batch(tmp_path):
    """2 x 256 samples per step on two processes, and 256 x 2 micro-batches on one, draw the same
    numbers (one random stream per slot of the global batch): the generators differ only by the
    order of floating-point sums, and both moved far from where they started."""
    common = sets("train.steps=30", "train.ta_updates=2", "train.batch_size=256")
    two = run(torchrun_cmd(2, "train", TOY, "--out", str(tmp_path / "two"), *common), timeout=300)
    assert two.returncode == 0, two.stderr[-3000:]
    one = run(didr_cmd("train", TOY, "--out", str(tmp_path / "one"), *common, "--set", "train.grad_accum=2"), timeout=300)
    assert one.returncode == 0, one.stderr[-3000:]
    assert "world_size=2" in _start_line(tmp_path / "two") and "world_size=1" in _start_line(tmp_path / "one")

    def outputs(weights):
        g = MLPGenerator(1, 32, 3)
        g.load_state_dict(weights)
        with torch.no_grad():
            return g(torch.randn(4096, 1, generator=torch.Generator().manual_seed(0)))

    init = outputs(load_file(str(tmp_path / "one" / "stages" / "seed0" / "generator_init_trained.safetensors")))
    x_two, x_one = outputs(exported(tmp_path / "two")), outputs(exported(tmp_path / "one"))
    assert (x_one - init).abs().mean() > 0.2
    assert (x_two - x_one).abs().max() < 1e-4


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

    from tests.helpers import ROOT, assert_bit_identical, subprocess_env

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


TINY_SDXL = str(ROOT / "configs" / "tiny-sdxl.yaml")
SDXL_SETS = ["--set", "train.steps=12", "--set", "train.checkpoint_every=2"]


@pytest.fixture(scope="module")
def sdxl_uninterrupted(tmp_path_factory):
    out = tmp_path_factory.mktemp("sdxl") / "whole"
    proc = run(torchrun_cmd(2, "train", TINY_SDXL, "--out", str(out), *SDXL_SETS), timeout=400)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out


@pytest.mark.slow
@pytest.mark.parametrize("victims", ["launch", "one worker"])
def test_tiny_sdxl_killed_with_sigkill_resumes_bit_identical(tmp_path, sdxl_uninterrupted, victims):
    """kill -9 (no checkpoint at the signal) right after the first periodic checkpoint: of the
    launcher and both workers (torchrun starts each worker in its own session, so killing the
    launcher alone leaves them running), or of one worker (the other stops on gloo's closed
    connection). The 2-process --resume ends bit-identical to the uninterrupted run."""
    import signal
    import subprocess
    import time

    import psutil

    from tests.helpers import assert_bit_identical, subprocess_env

    out = tmp_path / "killed"
    cmd = torchrun_cmd(2, "train", TINY_SDXL, "--out", str(out), *SDXL_SETS)
    proc = subprocess.Popen(cmd, cwd=ROOT, env=subprocess_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 300
    while not (out / "checkpoints" / "step-00000002").is_dir() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    workers = psutil.Process(proc.pid).children()
    assert len(workers) == 2
    for p in [psutil.Process(proc.pid), *workers] if victims == "launch" else [w for w in workers if w.environ().get("RANK") == "1"]:
        p.send_signal(signal.SIGKILL)
    proc.wait(timeout=120)
    assert proc.returncode != 0 and not (out / "export").exists()
    resumed = run(cmd + ["--resume"], timeout=400)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "(resumed from step-" in (out / "train.log").read_text()
    assert_bit_identical(exported(sdxl_uninterrupted), exported(out))


def test_a_deepspeed_launch_is_refused_before_anything_is_written(tmp_path, monkeypatch):
    """accelerate prepares one model per Accelerator under DeepSpeed; a method with a TA trains two."""
    from didr.cli import main
    from didr.errors import ConfigError

    monkeypatch.setenv("ACCELERATE_USE_DEEPSPEED", "true")
    with pytest.raises(ConfigError, match="the launch asks for DeepSpeed, which didr does not run"):
        make_accelerator()
    assert main(["train", TOY, "--out", str(tmp_path / "run"), *sets()]) == 2
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("max_norm", [float("inf"), 0.5])
def test_the_gradient_norm_is_accelerates_and_an_unclipped_gradient_keeps_every_bit(max_norm):
    """Without clipping the norm is taken directly (no accelerate bookkeeping per step): the same
    value accelerate reports, the gradients untouched, a NaN still seen."""
    from didr.train.distributed import clip_grad_norm

    acc = make_accelerator()
    grads = {}
    for how in ("ours", "accelerate"):
        torch.manual_seed(0)
        model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 4))
        model[2].requires_grad_(False)  # a parameter without a gradient
        model(torch.randn(6, 4, generator=torch.Generator().manual_seed(1))).pow(2).sum().backward()
        norm = clip_grad_norm(acc, model, max_norm) if how == "ours" else acc.clip_grad_norm_(model.parameters(), max_norm)
        grads[how] = (float(norm), [p.grad.clone() for p in model.parameters() if p.grad is not None])
    assert grads["ours"][0] == grads["accelerate"][0]
    assert all(torch.equal(a, b) for a, b in zip(grads["ours"][1], grads["accelerate"][1]))
    model[0].weight.grad[0, 0] = float("nan")
    assert not torch.isfinite(clip_grad_norm(acc, model, max_norm))


def _sharded_norm(rank: int) -> float:
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    from didr.train.fsdp import grad_norm

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 4))
    fully_shard(model, mesh=init_device_mesh("cpu", (2,)))
    model(torch.randn(6, 4, generator=torch.Generator().manual_seed(rank))).pow(2).sum().backward()
    return float(grad_norm(list(model.parameters()), float("inf")))


def test_gradient_norm_of_a_sharded_module_is_the_whole_models():
    """Under FSDP2 each process holds rows of the averaged gradient: the norm is reduced across the
    processes, so each gets the norm of the whole averaged gradient."""
    norms = on_two_gloo_ranks(_sharded_norm)
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 4))
    for rank in (0, 1):  # FSDP averages the processes' gradients
        (model(torch.randn(6, 4, generator=torch.Generator().manual_seed(rank))).pow(2).sum() / 2).backward()
    whole = torch.cat([p.grad.reshape(-1) for p in model.parameters()]).norm()
    assert norms[0] == pytest.approx(norms[1]) and norms[0] == pytest.approx(float(whole), rel=1e-5)
