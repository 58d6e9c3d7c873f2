"""DIDR at the published sizes of SDXL and Z-Image on the CPU: two steps of ``didr train`` with
time and peak resident memory next to what ``memory_estimate.py`` predicts for the same setting.

    flock /tmp/didr-heavy.lock python benchmarks/true_shapes.py --backbone sdxl --reward-dtype bfloat16
    flock /tmp/didr-heavy.lock python benchmarks/true_shapes.py --backbone sdxl --resolution 64 --steps 1 --no-share-base
    flock /tmp/didr-heavy.lock python benchmarks/true_shapes.py --backbone zimage --n-layers 30 --resolution 128

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
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

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
    raise RuntimeError("no VmHWM")


def reset_hwm(pid: int) -> None:
    Path(f"/proc/{pid}/clear_refs").write_text("5")


def import_baseline() -> int:
    """Resident bytes of a Python process that has imported what a run imports (no models)."""
    code = ("import resource, torch, diffusers, transformers, peft, accelerate, didr.experiments.text_to_image, didr.train.loop;"
            "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)")
    return int(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()[-1]) * 1024


def ensure_folder(what: str, folder: Path, dtype: str, n_layers: int | None) -> Path:
    """Write a random-weight folder in a child process, once (its memory is not the run's)."""
    marker = folder / ("config.json" if what == "clip-h" else "model_index.json")
    if not marker.is_file():
        kw = f", n_layers={n_layers}" if n_layers is not None else ""
        code = (f"from pathlib import Path; from didr.runtime import DTYPES; from didr.testing import true_shapes; "
                f"true_shapes.SAVERS[{what!r}](Path({str(folder)!r}), dtype=DTYPES[{dtype!r}]{kw})")
        cmd = [sys.executable, "-c", code]
        t0 = time.perf_counter()
        subprocess.run(cmd, check=True)
        print(f"built {folder} in {time.perf_counter() - t0:.0f} s", flush=True)
    return folder


def run_config(args, pipeline: Path, clip: Path) -> dict:
    backbone = {
        "kind": args.backbone, "pretrained": str(pipeline), "prompt_list": PROMPTS, "reward": f"pickscore:{clip}?dtype={args.reward_dtype}",
        "resolution": args.resolution, "generator_lora_rank": args.lora_rank, "ta_lora_rank": args.lora_rank,
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


def watch(cmd: list[str], out: Path, env: dict) -> dict:
    """Run ``cmd``; the peak RSS of building, of each step and of the end (checkpoint, export)."""
    proc = subprocess.Popen(cmd, env=env)
    peaks, times, started, seen = {}, [], False, 0
    log, metrics = out / "train.log", out / "metrics.jsonl"
    while True:
        time.sleep(0.2)
        pid, status, usage = os.wait4(proc.pid, os.WNOHANG)  # reaps the run when it ends, with its peak since the last reset
        if pid:
            break
        try:
            if not started and log.is_file() and " start: " in log.read_text():
                peaks["build"] = vm_hwm(proc.pid)
                reset_hwm(proc.pid)
                started = True
            lines = metrics.read_text().splitlines() if metrics.is_file() else []
            for line in lines[seen:]:
                peaks[f"step {len(times) + 1}"] = vm_hwm(proc.pid)
                reset_hwm(proc.pid)
                times.append(json.loads(line))
            seen = len(lines)
        except (FileNotFoundError, ProcessLookupError):  # the run ended between two looks
            _, status, usage = os.wait4(proc.pid, 0)
            break
    if status != 0:
        raise SystemExit(f"didr train failed (status {status}); see {out / 'train.log'}")
    peaks["checkpoint and export"] = usage.ru_maxrss * 1024
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
    p.add_argument("--lora-rank", type=int, default=64)
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
    depth = f"-{args.n_layers}layers" if args.backbone == "zimage" and args.n_layers else ""
    pipeline = ensure_folder(args.backbone, cache / f"{args.backbone}{depth}-bf16", "bfloat16", args.n_layers)
    clip = ensure_folder("clip-h", cache / "clip-h-bf16", "bfloat16", None)
    label = f"{args.backbone}{depth}-{args.resolution}px-b{args.batch}-k{args.drp_steps}" + ("-separate" if args.separate_generator else "") \
        + ("" if args.share_base else "-noshare")
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
    t0 = time.perf_counter()
    load = os.getloadavg()
    result = watch(cmd, out, env)
    wall = time.perf_counter() - t0
    sys.path.insert(0, str(HERE))
    from memory_estimate import Setting, estimate

    shared = args.share_base and not args.separate_generator
    setting = Setting(backbone=args.backbone, resolution=args.resolution, batch=args.batch, n_layers=args.n_layers, lora_rank=args.lora_rank,
                      ta_lora_rank=args.lora_rank, share_base=shared, decode_downscale=args.decode_downscale, reward_dtype=args.reward_dtype,
                      text_tokens=64 if args.backbone == "zimage" else None)
    est = estimate(setting)
    record(args, label, cfg, result, baseline, est, wall, load)


def record(args, label, cfg, result, baseline, est, wall, load) -> None:
    step_peaks = [v for k, v in result["peaks"].items() if k.startswith("step")]
    measured = max(step_peaks) / GIB
    predicted = est["total"] + baseline / GIB
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
        "| phase | peak RSS, GiB | seconds |",
        "|---|---|---|",
    ]
    for name, value in result["peaks"].items():
        n = int(name.split()[1]) if name.startswith("step") else 0
        sec = f"{per_step[n - 1]:.0f}" if 0 < n <= len(per_step) else ""
        lines.append(f"| {name} | {value / GIB:.2f} | {sec} |")
    lines += [
        "",
        "Estimate for the same setting (`memory_estimate.py`, GiB): "
        + "; ".join(f"{k} {v:.2f}" for k, v in est.items() if k != "total" and not k.startswith("parts"))
        + f"; plus this machine's Python process with its libraries imported, {baseline / GIB:.2f} (measured).",
        "",
        f"**Training peak: measured {measured:.2f} GiB, estimated {predicted:.2f} GiB "
        f"({100 * (predicted - measured) / measured:+.0f}%).**",
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
