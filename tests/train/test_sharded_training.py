"""FSDP2 as users launch it: ``accelerate launch --config_file configs/accelerate/fsdp2.yaml
--num_processes 2 -m didr train`` on CPU processes with gloo, for the tiny SDXL (generator and TA
as LoRA adapters over one shared, frozen base) and the tiny Z-Image (a fully trained generator of
its own, a LoRA TA over the reference).

Each run checks: the log states two sharded processes and what each holds (about half of every
network's parameters and of each optimiser's state); the loss and the exported generator (the
loop's tensors and the diffusers folder) match one process accumulating the same two micro-batches
per step, within SAME_BATCH_ATOL (the sums' order differs); kill -9 of the launch after a checkpoint,
then a resume on two processes, ends bit-identical to the uninterrupted run; a resume of that
checkpoint on one process (grad_accum 2), and of a one-process checkpoint on two, ends within the
same tolerance.
"""

from __future__ import annotations

import json
import re
import shutil
import signal
import subprocess
import sys
import time

import psutil
import pytest
import torch
from safetensors.torch import load_file

from tests.helpers import ROOT, assert_bit_identical, didr_cmd, run, subprocess_env

#: max |difference| of any exported weight (tiny networks' weights are O(0.1 - 1)) between runs of
#: one global batch split differently; each logged loss within LOSS_RTOL of the largest |value| that
#: loss takes in the run (the generator's surrogate loss is a sum of terms of that size that cancel)
LOSS_RTOL = 1e-5
SAME_BATCH_ATOL = 1e-5
STEPS = ["--set", "train.steps=6", "--set", "train.checkpoint_every=2", "--set", "train.log_every=1"]
NETWORK = {"sdxl": "unet", "zimage": "transformer"}


def sharded_cmd(config: str, out, *extra: str) -> list[str]:
    return [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(ROOT / "configs" / "accelerate" / "fsdp2.yaml"),
            "--num_processes", "2", "-m", "didr", "train", config, "--out", str(out), *STEPS, *extra]


def one_cmd(config: str, out, *extra: str) -> list[str]:
    return didr_cmd("train", config, "--out", str(out), *STEPS, "--set", "train.grad_accum=2", *extra)


def ok(cmd, timeout=400):
    proc = run(cmd, timeout=timeout)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return proc


def exports(out, kind) -> dict[str, torch.Tensor]:
    folder = out / "export" / NETWORK[kind]
    tensors = {f"loop.{k}": v for k, v in load_file(str(out / "export" / "generator.safetensors")).items()}
    tensors.update({f"diffusers.{k}": v for k, v in load_file(str(folder / "diffusion_pytorch_model.safetensors")).items()})
    return tensors


def max_difference(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return max(float((a[k].float() - b[k].float()).abs().max()) for k in a)


def losses(out) -> dict[int, dict]:
    return {m["step"]: m for m in map(json.loads, (out / "metrics.jsonl").read_text().splitlines())}


def assert_same_batch(a, b, kind) -> float:
    diff = max_difference(exports(a, kind), exports(b, kind))
    print(f"{kind}: {a.name} vs {b.name}: max |weight difference| {diff:.3g}")
    assert diff <= SAME_BATCH_ATOL
    la, lb = losses(a), losses(b)
    common = sorted(set(la) & set(lb))
    assert common
    for k in ("generator_loss", "ta_loss"):
        scale = max(abs(la[step][k]) for step in common)
        worst = max(abs(la[step][k] - lb[step][k]) for step in common)
        print(f"{kind}: {a.name} vs {b.name}: {k} max |difference| {worst:.3g} (largest |{k}| {scale:.3g})")
        assert worst <= LOSS_RTOL * scale
    return diff


def held(log: str) -> list[tuple[int, int, int]]:
    """(rank 0's, rank 1's, all) of every network and optimiser in the log's last line."""
    done = [line for line in log.splitlines() if " done: " in line][-1]
    return [tuple(int(x.replace(",", "")) for x in m) for m in re.findall(r": ([\d,]+) \| ([\d,]+) of ([\d,]+) ", done)]


def kill_after_first_checkpoint(cmd, out) -> None:
    proc = subprocess.Popen(cmd, cwd=ROOT, env=subprocess_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 400
    while not (out / "checkpoints" / "step-00000002").is_dir() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    victims = [psutil.Process(proc.pid), *psutil.Process(proc.pid).children(recursive=True)]
    assert len(victims) >= 3  # the launcher and two workers
    for p in victims:
        p.send_signal(signal.SIGKILL)
    proc.wait(timeout=120)
    assert proc.returncode != 0 and not (out / "export").exists()


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["sdxl", "zimage"])
def test_two_sharded_processes_split_match_one_and_resume(tmp_path, kind):
    config = str(ROOT / "configs" / f"tiny-{kind}.yaml")
    whole = tmp_path / "whole"
    ok(sharded_cmd(config, whole))
    log = (whole / "train.log").read_text()
    assert "world_size=2 parallelism=fsdp2 backend=gloo device=cpu" in log
    shares = held(log)
    assert len(shares) >= 3  # the networks, then the generator's and the TA's optimisers
    for rank0, rank1, total in shares:
        print(f"{kind}: held {rank0:,} | {rank1:,} of {total:,}")
        assert abs(rank0 / total - 0.5) < 0.05 and abs(rank1 / total - 0.5) < 0.05

    ok(one_cmd(config, tmp_path / "one"))
    assert_same_batch(whole, tmp_path / "one", kind)

    killed = tmp_path / "killed"
    kill_after_first_checkpoint(sharded_cmd(config, killed), killed)
    shutil.copytree(killed, tmp_path / "two-one")
    ok(sharded_cmd(config, killed, "--resume"))
    assert "(resumed from step-00000002)" in (killed / "train.log").read_text()
    assert_bit_identical(exports(whole, kind), exports(killed, kind))

    ok(one_cmd(config, tmp_path / "two-one", "--resume"))
    assert "now 1 x 2: the same global batch and random streams" in (tmp_path / "two-one" / "train.log").read_text()
    assert_same_batch(whole, tmp_path / "two-one", kind)

    ok(one_cmd(config, tmp_path / "one-two", "--set", "train.steps=2"))
    ok(sharded_cmd(config, tmp_path / "one-two", "--resume", "--set", "train.grad_accum=1"))
    assert_same_batch(whole, tmp_path / "one-two", kind)
