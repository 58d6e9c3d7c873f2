"""FSDP2 as users launch it, on two CPU processes with gloo: what each process holds, the match with
one process, kill -9 and resume, and resumes on another number of processes.

    python benchmarks/sharded_training.py            # the tiny SDXL and the tiny Z-Image; writes results/sharded_training.md

For each tiny preset (``configs/tiny-sdxl.yaml``: generator and TA as LoRA adapters over one shared,
frozen base; ``configs/tiny-zimage.yaml``: a fully trained generator of its own and a LoRA TA over
the reference), 6 steps with a checkpoint every 2:

- ``accelerate launch --config_file configs/accelerate/fsdp2.yaml --num_processes 2 -m didr train``:
  what each process holds of every network and optimiser state, as its log states it;
- ``didr train ... --set train.grad_accum=2`` on one process: the same global batch and the same
  random numbers (``didr.train.streams``); the largest difference of any exported weight (the loop's
  tensors and the diffusers folder) and of each logged loss;
- the sharded launch killed with SIGKILL (launcher and workers) after its step-2 checkpoint, then
  resumed on two processes: bit-identical or not;
- that checkpoint resumed on one process (``grad_accum: 2``), and a one-process checkpoint resumed
  on two: the largest differences from the uninterrupted run.

``tests/benchmarks/test_sharded_training.py`` runs :func:`measure` and holds the figures to their
tolerances.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil
import torch
from safetensors.torch import load_file

from didr.eval.report import Provenance, markdown_table, write_report
from didr.runtime import load_average

ROOT = Path(__file__).resolve().parents[1]
STEPS = ["--set", "train.steps=6", "--set", "train.checkpoint_every=2", "--set", "train.log_every=1"]
NETWORK = {"sdxl": "unet", "zimage": "transformer"}


def env() -> dict:
    return {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}


def sharded_cmd(kind: str, out: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(ROOT / "configs" / "accelerate" / "fsdp2.yaml"),
            "--num_processes", "2", "-m", "didr", "train", str(ROOT / "configs" / f"tiny-{kind}.yaml"), "--out", str(out), *STEPS, *extra]


def one_cmd(kind: str, out: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "didr", "train", str(ROOT / "configs" / f"tiny-{kind}.yaml"), "--out", str(out), *STEPS,
            "--set", "train.grad_accum=2", *extra]


def ok(cmd: list[str]) -> float:
    """Run ``cmd`` to completion; its wall time in seconds."""
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, env=env(), capture_output=True, text=True, timeout=900)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd[-8:])} failed:\n{proc.stderr[-4000:]}")
    return time.perf_counter() - t0


def exports(out: Path, kind: str) -> dict[str, torch.Tensor]:
    """The loop's exported tensors and the diffusers folder's, by name."""
    tensors = {f"loop.{k}": v for k, v in load_file(str(out / "export" / "generator.safetensors")).items()}
    folder = out / "export" / NETWORK[kind] / "diffusion_pytorch_model.safetensors"
    tensors.update({f"diffusers.{k}": v for k, v in load_file(str(folder)).items()})
    return tensors


def compare(a: Path, b: Path, kind: str) -> dict:
    """The largest |difference| of any exported weight and of each logged loss (with the loss's largest |value|)."""
    ea, eb = exports(a, kind), exports(b, kind)
    if ea.keys() != eb.keys():
        raise RuntimeError(f"{a} and {b} exported different tensors")
    out = {"weights": max(float((ea[k].float() - eb[k].float()).abs().max()) for k in ea),
           "identical": all(torch.equal(ea[k], eb[k]) for k in ea)}
    la, lb = metrics(a), metrics(b)
    common = sorted(set(la) & set(lb))
    for k in ("generator_loss", "ta_loss"):
        out[k] = max(abs(la[s][k] - lb[s][k]) for s in common)
        out[f"{k}_scale"] = max(abs(la[s][k]) for s in common)
    return out


def metrics(out: Path) -> dict[int, dict]:
    return {m["step"]: m for m in map(json.loads, (out / "metrics.jsonl").read_text().splitlines())}


def held(out: Path) -> list[dict]:
    """What each process holds of every network and optimiser, from the log's last line."""
    done = [line for line in (out / "train.log").read_text().splitlines() if " done: " in line][-1]
    found = re.findall(r"((?:network \d+ \(\w+\))|(?:\w+ optimiser)): ([\d,]+) \| ([\d,]+) of ([\d,]+) (\w+)", done)
    return [{"what": w, "held": [int(a.replace(",", "")), int(b.replace(",", ""))], "total": int(t.replace(",", "")), "unit": u}
            for w, a, b, t, u in found]


def kill_after_first_checkpoint(cmd: list[str], out: Path) -> None:
    """SIGKILL to the launcher and both workers as soon as the step-2 checkpoint is in place."""
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 600
    while not (out / "checkpoints" / "step-00000002").is_dir() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    victims = [psutil.Process(proc.pid), *psutil.Process(proc.pid).children(recursive=True)]
    for p in victims:
        p.send_signal(signal.SIGKILL)
    proc.wait(timeout=120)
    if proc.returncode == 0 or (out / "export").exists() or len(victims) < 3:
        raise RuntimeError(f"the kill did not land mid-run ({len(victims)} processes, exit {proc.returncode})")


def measure(kind: str, work: Path) -> dict:
    """Every run above for one tiny preset, under ``work``."""
    whole, result = work / "whole", {"kind": kind, "seconds": {}}
    result["seconds"]["2 processes, FSDP2"] = ok(sharded_cmd(kind, whole))
    log = (whole / "train.log").read_text()
    result["start"] = next(line for line in log.splitlines() if " start: " in line).split("; ", 1)[1]
    result["held"] = held(whole)
    result["seconds"]["1 process, grad_accum 2"] = ok(one_cmd(kind, work / "one"))
    result["one process"] = compare(whole, work / "one", kind)

    killed = work / "killed"
    kill_after_first_checkpoint(sharded_cmd(kind, killed), killed)
    shutil.copytree(killed, work / "two-one")
    ok(sharded_cmd(kind, killed, "--resume"))
    result["resumed after kill -9"] = compare(whole, killed, kind)
    result["resumed after kill -9"]["log"] = "(resumed from step-00000002)" in (killed / "train.log").read_text()

    ok(one_cmd(kind, work / "two-one", "--resume"))
    result["2 -> 1 processes"] = compare(whole, work / "two-one", kind)
    ok(one_cmd(kind, work / "one-two", "--set", "train.steps=2"))
    ok(sharded_cmd(kind, work / "one-two", "--resume", "--set", "train.grad_accum=1"))
    result["1 -> 2 processes"] = compare(whole, work / "one-two", kind)
    return result


def report(results: list[dict], load: float) -> list[str]:
    held_rows, diff_rows = [], []
    for r in results:
        for h in r["held"]:
            shares = " / ".join(f"{100 * x / h['total']:.1f}%" for x in h["held"])
            held_rows.append([r["kind"], h["what"], f"{h['total']:,} {h['unit']}", " / ".join(f"{x:,}" for x in h["held"]), shares])
        for name in ("one process", "resumed after kill -9", "2 -> 1 processes", "1 -> 2 processes"):
            c = r[name]
            diff_rows.append([r["kind"], name, "yes" if c["identical"] else "no", f"{c['weights']:.3g}",
                              f"{c['generator_loss']:.3g} (of {c['generator_loss_scale']:.3g})", f"{c['ta_loss']:.3g} (of {c['ta_loss_scale']:.3g})"])
    return [
        "Two CPU processes joined by gloo, one torch thread each; other work shared the 2 cores "
        f"(5-minute load average {load:.1f} at the start). Every run: 6 steps, a checkpoint every 2.",
        "## What each process holds (measured, from the run's log)",
        "The optimisers' step counters, one number per parameter, are whole on each process.",
        markdown_table(["preset", "network / state", "in all", "process 0 / process 1", "shares"], held_rows),
        "## Against the uninterrupted two-process run",
        "One process with `grad_accum: 2` sees the same global batch and the same random numbers. "
        "Weights: the largest |difference| of any exported tensor (the loop's and the diffusers folder's). "
        "Losses: the largest |difference| over the logged steps, with the loss's largest |value| in the run.",
        markdown_table(["preset", "run", "bit-identical", "weights", "generator loss", "TA loss"], diff_rows),
        "## Wall time (2 shared cores; not a speed figure)",
        markdown_table(["preset", "run", "seconds"], [[r["kind"], k, f"{v:.0f}"] for r in results for k, v in r["seconds"].items()]),
        "Run starts as logged: " + "; ".join(f"{r['kind']}: `{r['start']}`" for r in results) + ".",
        "## Not run",
        "No GPU has run either preset (`configs/accelerate/fsdp2.yaml`, `fsdp2-multinode.yaml`), nor has any launch over several "
        "machines. The memory of sharded runs at true shapes is in `true_shapes.md` (Z-Image's transformer at full width, cut to "
        "3 blocks, on 2 CPU processes) and, for 8 GPUs at 1024 px, estimated in `memory_estimate.md`.",
    ]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--kinds", default="sdxl,zimage")
    p.add_argument("--record", default=str(ROOT / "benchmarks" / "results" / "sharded_training.md"))
    args = p.parse_args()
    load = load_average()
    with tempfile.TemporaryDirectory() as tmp:
        results = [measure(kind, Path(tmp) / kind) for kind in args.kinds.split(",")]
    for r in results:
        print(json.dumps(r, indent=1))
    prov = Provenance.here(" ".join(["python benchmarks/sharded_training.py", *sys.argv[1:]]), "2 CPU processes, gloo, 1 torch thread each")
    write_report(Path(args.record), "Sharded training (FSDP2) on two CPU processes", prov, report(results, load))


if __name__ == "__main__":
    main()
