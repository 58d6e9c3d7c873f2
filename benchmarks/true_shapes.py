"""DIDR at the published sizes of SDXL and Z-Image on the CPU: two steps of ``didr train`` with
time and peak resident memory next to what ``memory_estimate.py`` predicts for the same setting.

    flock /tmp/didr-heavy.lock python benchmarks/true_shapes.py --backbone sdxl --reward-dtype bfloat16
    flock /tmp/didr-heavy.lock python benchmarks/true_shapes.py --backbone sdxl --resolution 64 --steps 1 --no-share-base
    flock /tmp/didr-heavy.lock python benchmarks/true_shapes.py --backbone zimage --n-layers 30 --resolution 128
    flock /tmp/didr-heavy.lock python benchmarks/true_shapes.py --backbone zimage --n-layers 1 --n-refiner-layers 1 --resolution 64 \
        --lora-rank 0 --reward tiny --processes 2          # a fully trained generator, sharded over 2 CPU processes (FSDP2)

Random-weight pipeline folders are written once, in a child process, from the published configs
(``didr.testing.true_shapes``), under ``--cache``. The run itself is the user's command,
``python -m didr train CONFIG --out DIR``, on a config that this script writes: a LoRA generator and a
LoRA TA (rank 64), DRP with k = 2 and checkpointing, bf16 weights and autocast, the real VAE
decoding at reduced resolution (``decode_downscale``), and PickScore's full-width CLIP ViT-H/14 as the
reward, in ``--reward-dtype`` (float32 unless told, as didr loads rewards; the run's reward spec and
the estimate get the same). This script watches the run from outside. When training starts
(``train.log``) and after each step (``metrics.jsonl``) it reads the run's peak resident memory (``VmHWM``) and resets it
(``/proc/PID/clear_refs``). So the peaks of building, of each step and of the checkpoint and export
are separate. Each run's record is appended to ``benchmarks/results/true_shapes.md``.

``--processes N`` launches the run as users shard it, ``accelerate launch --config_file
configs/accelerate/fsdp2.yaml --num_processes N``, and watches each process (each one's peak is
recorded, next to the estimate for N GPUs). ``--lora-rank 0`` trains the generator fully (a network
of its own, in float32); ``--reward tiny`` scores with the tests' tiny random CLIP, whose memory is
negligible, where the measurement is about the networks.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import psutil
import yaml

from didr.eval.report import Provenance

HERE = Path(__file__).resolve().parent
GIB = 2**30
PROMPTS = ["a photo of a cat", "a red cup of coffee on a wooden table", "an astronaut riding a horse"]


def vm_hwm(pid: int) -> int:
    """Peak resident set size of ``pid`` since its last reset, in bytes."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return 0  # a process that has exited and not yet been reaped has no memory left


def reset_hwm(pid: int) -> None:
    Path(f"/proc/{pid}/clear_refs").write_text("5")


def import_baseline() -> int:
    """Resident bytes of a Python process that has imported what a run imports (no models)."""
    code = ("import resource, torch, diffusers, transformers, peft, accelerate, didr.experiments.text_to_image, didr.train.loop;"
            "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)")
    return int(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()[-1]) * 1024


def ensure_folder(what: str, folder: Path, dtype: str, n_layers: int | None, n_refiner_layers: int | None = None) -> Path:
    """Write a random-weight folder in a child process, once (its memory is not the run's)."""
    marker = folder / ("config.json" if what == "clip-h" else "model_index.json")
    if not marker.is_file():
        kw = f", n_layers={n_layers}" if n_layers is not None else ""
        kw += f", n_refiner_layers={n_refiner_layers}" if n_refiner_layers is not None else ""
        code = (f"from pathlib import Path; from didr.runtime import DTYPES; from didr.testing import true_shapes; "
                f"true_shapes.SAVERS[{what!r}](Path({str(folder)!r}), dtype=DTYPES[{dtype!r}]{kw})")
        cmd = [sys.executable, "-c", code]
        t0 = time.perf_counter()
        subprocess.run(cmd, check=True)
        print(f"built {folder} in {time.perf_counter() - t0:.0f} s", flush=True)
    return folder


def run_config(args, pipeline: Path, clip: Path | None) -> dict:
    reward = f"pickscore:{clip}?dtype={args.reward_dtype}" if args.reward == "pickscore" else "tiny-clip"
    backbone = {
        "kind": args.backbone, "pretrained": str(pipeline), "prompt_list": PROMPTS, "reward": reward,
        "resolution": args.resolution, "generator_lora_rank": args.lora_rank, "ta_lora_rank": args.ta_lora_rank,
        "share_base": args.share_base, "dtype": "bfloat16", "autocast": "bf16", "gradient_checkpointing": True,
        "decode_micro_batch": 1, "decode_checkpoint": True, "decode_downscale": args.decode_downscale, "device": "cpu",
        "max_sequence_length": 64,
    }
    if args.backbone == "sdxl":
        backbone["generator_t"] = 0.4  # DMD2's one-step timestep 399
    if args.separate_generator:
        backbone["generator"] = str(pipeline)  # a second network of the same shape, as Z-Image-Turbo or DMD2's UNet is
    return {
        "experiment": "text-to-image",
        "method": {"name": "didr", "beta": 0.72, "drp_steps": args.drp_steps, "drp_checkpoint": True},
        "backbone": backbone,
        "train": {"steps": args.steps, "batch_size": args.batch, "ta_updates": args.ta_updates, "lr_generator": 5e-7, "lr_ta": 5e-7,
                  "log_every": 1, "progress": False},
    }


def workers(launcher: int, processes: int) -> list[int]:
    """The training processes: the command itself, or the launch's workers once all have started."""
    if processes == 1:
        return [launcher]
    found = sorted(c.pid for c in psutil.Process(launcher).children())
    return found if len(found) == processes else []


def watch(cmd: list[str], out: Path, env: dict, processes: int = 1, steps: int = 0) -> dict:
    """Run ``cmd``; each process's peak RSS while building, in each step and at the end (checkpoint, export)."""
    proc = subprocess.Popen(cmd, env=env)
    pids, phase, peaks, times = [], "build", {}, []
    log, metrics = out / "train.log", out / "metrics.jsonl"
    while True:
        pid, status, usage = os.wait4(proc.pid, os.WNOHANG)  # reaps the run when it ends, with its peak since the last reset
        if pid:
            break
        time.sleep(0.1)
        try:
            pids = pids or workers(proc.pid, processes)
            if not pids:
                continue
            now = [vm_hwm(p) for p in pids]
            peaks[phase] = [max(a, b) for a, b in zip(peaks.get(phase, now), now)]
            if phase == "build" and log.is_file() and " start: " in log.read_text():
                phase = "step 1"
            lines = metrics.read_text().splitlines() if metrics.is_file() else []
            if len(lines) > len(times):
                times += [json.loads(line) for line in lines[len(times):]]
                phase = "checkpoint and export" if len(times) >= steps else f"step {len(times) + 1}"
            else:
                continue
            for p in pids:
                reset_hwm(p)
        except (FileNotFoundError, ProcessLookupError, psutil.NoSuchProcess):  # the run ended between two looks
            continue
    if status != 0:
        raise SystemExit(f"didr train failed (status {status}); see {out / 'train.log'}")
    if processes == 1:
        peaks[phase] = [max(peaks.get(phase, [0])[0], usage.ru_maxrss * 1024)]
    return {"peaks": peaks, "metrics": times}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--backbone", choices=["sdxl", "zimage"], default="sdxl")
    p.add_argument("--n-layers", type=int, default=None, help="Z-Image main blocks (published: 30)")
    p.add_argument("--resolution", type=int, default=512)
    p.add_argument("--decode-downscale", type=float, default=2.0)
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--steps", type=int, default=2)
    p.add_argument("--ta-updates", type=int, default=1)
    p.add_argument("--drp-steps", type=int, default=2)
    p.add_argument("--lora-rank", type=int, default=64, help="the generator's LoRA rank; 0 = fully trained, a network of its own in float32")
    p.add_argument("--ta-lora-rank", type=int, default=64)
    p.add_argument("--n-refiner-layers", type=int, default=None, help="Z-Image blocks in each refiner (published: 2)")
    p.add_argument("--reward", default="pickscore", choices=["pickscore", "tiny"], help="PickScore's CLIP ViT-H/14, or the tests' tiny random CLIP")
    p.add_argument("--processes", type=int, default=1, help="> 1: shard over this many CPU processes (configs/accelerate/fsdp2.yaml)")
    p.add_argument("--reward-dtype", default="float32", choices=["bfloat16", "float32"], help="PickScore's weights (didr's default: float32)")
    p.add_argument("--share-base", action=argparse.BooleanOptionalAction, default=True,
                   help="the LoRA generator over the reference shares its network (--no-share-base: a separate copy)")
    p.add_argument("--separate-generator", action="store_true", help="the generator is a second network (DMD2's UNet, Z-Image-Turbo)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--cache", default="/work/scratch/real-shapes/models", help="where the random-weight folders are kept")
    p.add_argument("--out", default=None, help="run directory (default: under --cache)")
    p.add_argument("--record", default=str(HERE / "results" / "true_shapes.md"))
    args = p.parse_args()

    cache = Path(args.cache)
    depth = f"-{args.n_layers}layers" if args.backbone == "zimage" and args.n_layers is not None else ""
    depth += f"-{args.n_refiner_layers}refiner" if args.backbone == "zimage" and args.n_refiner_layers is not None else ""
    pipeline = ensure_folder(args.backbone, cache / f"{args.backbone}{depth}-bf16", "bfloat16", args.n_layers, args.n_refiner_layers)
    clip = ensure_folder("clip-h", cache / "clip-h-bf16", "bfloat16", None) if args.reward == "pickscore" else None
    label = f"{args.backbone}{depth}-{args.resolution}px-b{args.batch}-k{args.drp_steps}" + ("-separate" if args.separate_generator else "") \
        + ("" if args.share_base else "-noshare") + ("-full" if args.lora_rank == 0 else "") + ("-tinyreward" if args.reward == "tiny" else "") \
        + (f"-fsdp2x{args.processes}" if args.processes > 1 else "")
    out = Path(args.out or cache.parent / "runs" / label)
    if out.exists():
        subprocess.run(["rm", "-rf", str(out)], check=True)
    out.mkdir(parents=True)
    cfg = run_config(args, pipeline, clip)
    (out / "run.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))

    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "MKL_NUM_THREADS": str(args.threads), "HF_HUB_OFFLINE": "1"}
    baseline = import_baseline()
    cmd = [sys.executable, "-c", f"import torch, sys; torch.set_num_threads({args.threads}); from didr.cli import main; sys.exit(main())",
           "train", str(out / "run.yaml"), "--out", str(out)]
    if args.processes > 1:
        cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(HERE.parent / "configs" / "accelerate" / "fsdp2.yaml"),
               "--num_processes", str(args.processes), "-m", "didr", *cmd[3:]]
    t0 = time.perf_counter()
    load = os.getloadavg()
    result = watch(cmd, out, env, args.processes, args.steps)
    wall = time.perf_counter() - t0
    sys.path.insert(0, str(HERE))
    from memory_estimate import Setting, estimate

    shared = args.share_base and not args.separate_generator and args.lora_rank > 0
    setting = Setting(backbone=args.backbone, resolution=args.resolution, batch=args.batch, n_layers=args.n_layers, lora_rank=args.lora_rank,
                      ta_lora_rank=args.ta_lora_rank, share_base=shared, decode_downscale=args.decode_downscale, reward_dtype=args.reward_dtype,
                      text_tokens=64 if args.backbone == "zimage" else None, n_refiner_layers=args.n_refiner_layers, gpus=args.processes,
                      reward=args.reward)
    est = estimate(setting)
    record(args, label, cfg, result, baseline, est, wall, load)


def record(args, label, cfg, result, baseline, est, wall, load) -> None:
    ranks = len(next(iter(result["peaks"].values())))
    step_peaks = [v for k, v in result["peaks"].items() if k.startswith("step")]
    measured = [max(v[r] for v in step_peaks) / GIB for r in range(ranks)]
    predicted = est["total"] + baseline / GIB
    each = ", ".join(f"{m:.2f}" for m in measured)
    secs = [m["seconds"] for m in result["metrics"]]
    per_step = [b - a for a, b in zip([0.0] + secs, secs)]
    bad = result["metrics"][-1].get("bad_steps", 0.0) if result["metrics"] else float("nan")
    cmd = "python benchmarks/true_shapes.py " + " ".join(sys.argv[1:])
    lines = [
        f"## {label}",
        "",
        *Provenance.here(f"flock /tmp/didr-heavy.lock {cmd}", f"load average {load[0]:.1f} when it started (other work shared the machine)").lines(),
        f"Wall time {wall / 60:.1f} min, of which steps {secs[-1] / 60 if secs else float('nan'):.1f} min.  ",
        f"Setting: {json.dumps({k: v for k, v in cfg['backbone'].items() if k not in ('pretrained', 'prompt_list')})}; "
        f"method {json.dumps(cfg['method'])}; train {json.dumps({k: cfg['train'][k] for k in ('steps', 'batch_size', 'ta_updates')})}; "
        f"skipped (non-finite) steps: {bad:.0f}.",
        "",
        "| phase | " + " | ".join(f"peak RSS of process {r}, GiB" for r in range(ranks)) + " | seconds |",
        "|---|" + "---|" * ranks + "---|",
    ]
    for name, value in result["peaks"].items():
        n = int(name.split()[1]) if name.startswith("step") else 0
        sec = f"{per_step[n - 1]:.0f}" if 0 < n <= len(per_step) else ""
        lines.append(f"| {name} | " + " | ".join(f"{v / GIB:.2f}" for v in value) + f" | {sec} |")
    lines += [
        "",
        f"Estimate for the same setting{f' on {ranks} GPUs' if ranks > 1 else ''} (`memory_estimate.py`, GiB, per process): "
        + "; ".join(f"{k} {v:.2f}" for k, v in est.items() if k != "total" and not k.startswith("parts"))
        + f"; plus this machine's Python process with its libraries imported, {baseline / GIB:.2f} (measured).",
        "",
        f"**Training peak{' per process' if ranks > 1 else ''}: measured {each} GiB, estimated {predicted:.2f} GiB "
        f"({100 * (predicted - max(measured)) / max(measured):+.0f}%).**",
        "",
    ]
    text = "\n".join(lines)
    print(text)
    path = Path(args.record)
    if not path.is_file():
        path.write_text(HEADER)
    with open(path, "a") as f:
        f.write(text + "\n")


HEADER = """# DIDR at true shapes on the CPU

`benchmarks/true_shapes.py` runs `didr train` for two DIDR steps on random-weight networks of the
published configurations (`src/didr/models/configs/`), loaded through the real `from_pretrained`
path, and records the peak resident memory of each phase next to `benchmarks/memory_estimate.py`'s
estimate for the same setting. Peaks are per phase: VmHWM is reset when training starts and after
each step. The estimate counts the training step; the measured Python process with its libraries is
added to it.

"""


if __name__ == "__main__":
    main()
