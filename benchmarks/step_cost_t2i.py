"""Seconds and peak GPU memory per outer DIDR step on SDXL- and Z-Image-size networks, against
DI++ in the same run. Random weights, so no download is needed.

    python benchmarks/step_cost_t2i.py                        # on a GPU: both backbones at 1024 px
    python benchmarks/step_cost_t2i.py --backbones sdxl --grid full
    python benchmarks/step_cost_t2i.py --tiny                 # CPU, tiny pipelines: checks that the script works
    python benchmarks/step_cost_t2i.py --grid check --repeats 2   # the GPU check: DI++, DIDR k = 1, 2 on SDXL and Z-Image at 1024 px
    python benchmarks/step_cost_t2i.py --grid check --device cpu --resolution 64 --warmup 0 --repeats 1 --ta-updates 1   # the same on a CPU

The networks are the published configurations (``didr.testing.true_shapes``), written once as
pipeline folders under ``--cache`` in bf16 and loaded through ``backbone.pretrained``, the path that
released weights take. Each configuration is built with the real ``build()`` and timed with the real
``Trainer.step()``, which runs ``ta_updates`` TA updates and one generator update. The generator is a
second network of the reference's shape, as DMD2's UNet and Z-Image-Turbo are, except in the
``shared`` rows, where it is a LoRA over the reference itself. A configuration that runs out of
memory is recorded as OOM, and the script goes on.

Grids: ``axes`` (the default) varies one factor at a time around batch 1, LoRA, checkpointing and
DRP k = 1: batch 1/2/4, DRP k = 1/2/4, checkpointing off, full fine-tuning, shared base. ``full``
runs every combination of batch, LoRA/full, checkpointing and k. Each DIDR row is divided by the
DI++ row with the same backbone, batch, LoRA/full, checkpointing and base sharing. ``smoke``: two
rows and their DI++ rows, to check the script. ``check``: per backbone, DI++ and DIDR with DRP k = 1
and 2, LoRA generator over the shared base, batch 1 (the one-command GPU check; on a CPU at reduced
resolution it fits in 24 GB with Z-Image at full depth). Each row also shows
``memory_estimate.py``'s estimate for its setting (one DIDR generator update; DI++ skips the DRS
backward, so its estimate is an upper bound), and on a CPU the peak resident memory during its steps
(VmHWM, reset after the build). The table goes
to ``benchmarks/results/step_cost_t2i.md`` with the command, the machine and the date.
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import itertools
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from didr.eval.report import Provenance
from didr.runtime import quiet_libraries

HERE = Path(__file__).resolve().parent
GIB = 2**30
PROMPTS = ["a photo of a cat", "a red cup of coffee on a wooden table", "an astronaut riding a horse"]


@dataclass(frozen=True)
class Row:
    backbone: str
    method: str = "didr"  # didr | dipp
    batch: int = 1
    lora: bool = True
    checkpointing: bool = True
    drp_steps: int = 1
    shared: bool = False  # the LoRA generator over the reference itself (one base network)

    @property
    def baseline(self) -> "Row":
        return dataclasses.replace(self, method="dipp", drp_steps=1)

    def label(self) -> str:
        return (f"{self.backbone} {'DIDR k=' + str(self.drp_steps) if self.method == 'didr' else 'DI++'} batch {self.batch} "
                f"{'LoRA' if self.lora else 'full'}{' shared' if self.shared else ''} ckpt {'on' if self.checkpointing else 'off'}")


def grid(backbones: list[str], kind: str) -> list[Row]:
    rows: list[Row] = []
    for b in backbones:
        if kind == "smoke":  # a check of the script: DRP k = 2 and full fine-tuning, with their DI++ rows
            rows += [Row(b, drp_steps=2), Row(b, lora=False)]
        elif kind == "check":  # the one-command check: DIDR k = 1 and 2 against DI++, one base network
            rows += [Row(b, shared=True), Row(b, shared=True, drp_steps=2)]
        elif kind == "full":
            for batch, lora, ckpt, k in itertools.product((1, 2, 4), (True, False), (True, False), (1, 2, 4)):
                rows.append(Row(b, batch=batch, lora=lora, checkpointing=ckpt, drp_steps=k))
        else:
            base = Row(b)
            rows += [base] + [dataclasses.replace(base, batch=n) for n in (2, 4)] + [dataclasses.replace(base, drp_steps=k) for k in (2, 4)]
            rows += [dataclasses.replace(base, checkpointing=False), dataclasses.replace(base, lora=False), dataclasses.replace(base, shared=True)]
    with_baselines = []
    for r in rows:
        if r.baseline not in with_baselines:
            with_baselines.append(r.baseline)
        with_baselines.append(r)
    return with_baselines


def folders(backbone: str, cache: Path, tiny: bool) -> tuple[Path, str]:
    """(pipeline folder, reward spec), written once."""
    from didr.testing import tiny as tiny_models
    from didr.testing import true_shapes

    if tiny:
        pipe = cache / f"tiny-{backbone}"
        if not (pipe / "model_index.json").is_file():
            tiny_models.TINY_BUILDERS[backbone](pipe)
        clip = cache / "tiny-clip"
        if not (clip / "config.json").is_file():
            tiny_models.save_tiny_clip(clip)
        return pipe, f"pickscore:{clip}"
    build_on = "cuda" if torch.cuda.is_available() else "cpu"  # a GPU draws the random weights in seconds
    pipe = cache / f"{backbone}-bf16"
    if not (pipe / "model_index.json").is_file():
        true_shapes.SAVERS[backbone](pipe, dtype=torch.bfloat16, device=build_on)
    clip = cache / "clip-h-bf16"
    if not (clip / "config.json").is_file():
        true_shapes.save_clip_h(clip, dtype=torch.bfloat16, device=build_on)
    return pipe, f"pickscore:{clip}"


def run_config(row: Row, pipe: Path, reward: str, args) -> dict:
    backbone = {
        "kind": row.backbone, "pretrained": str(pipe), "prompt_list": PROMPTS, "reward": reward, "resolution": args.resolution,
        "generator_lora_rank": args.lora_rank if row.lora else 0, "ta_lora_rank": args.lora_rank, "share_base": row.shared,
        "dtype": "bfloat16", "autocast": "bf16", "gradient_checkpointing": row.checkpointing, "decode_micro_batch": 1,
        "decode_checkpoint": row.checkpointing, "device": args.device, "max_sequence_length": 128,
    }
    if not row.shared:
        backbone["generator"] = str(pipe)  # a second network of the reference's shape
    if row.backbone == "sdxl":
        backbone["generator_t"] = 0.4  # DMD2's timestep 399
    method = {"name": row.method, "beta": 0.72, "alpha": 1.0, "drp_steps": row.drp_steps, "drp_checkpoint": row.checkpointing}
    train = {"steps": args.warmup + args.repeats, "batch_size": row.batch, "ta_updates": args.ta_updates, "lr_generator": 5e-7,
             "lr_ta": 5e-7, "progress": False}
    return {"experiment": "text-to-image", "method": method, "backbone": backbone, "train": train}


def peak_memory(device: torch.device) -> float:
    """Peak GPU memory since the last reset, or the process's peak resident memory (VmHWM) since the last reset."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / GIB
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024 / GIB
    raise RuntimeError("no VmHWM in /proc/self/status")


def reset_peak_memory(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
    else:
        Path("/proc/self/clear_refs").write_text("5")  # VmHWM back to the current RSS


def estimate_gib(row: Row, args) -> float:
    """memory_estimate.py's total for the row's setting (reward in float32, as the run loads it)."""
    sys.path.insert(0, str(HERE))
    from memory_estimate import Setting, estimate

    setting = Setting(backbone=row.backbone, resolution=args.resolution, batch=row.batch, lora_rank=args.lora_rank if row.lora else 0,
                      ta_lora_rank=args.lora_rank, share_base=row.shared, checkpointing=row.checkpointing)
    return estimate(setting)["total"]


def measure(row: Row, pipe: Path, reward: str, args, work: Path) -> dict:
    """Median seconds per outer step and the peak memory of one configuration (or its error)."""
    from didr import config as cfgio
    from didr.experiments.config import RunConfig
    from didr.experiments.text_to_image import build
    from didr.objectives.config import build_objective
    from didr.train.loop import Alignment, Trainer

    cfg = cfgio.from_dict(RunConfig, run_config(row, pipe, reward, args))
    t2i = trainer = None
    try:
        t2i = build(cfg.backbone, work)
        device = t2i.device
        objective = build_objective(cfg.method, t2i.generator.schedule, t2i.reward)
        trainer = Trainer(Alignment(t2i.generator, t2i.reference, t2i.ta, objective, t2i.sample_inputs), cfg.train, None)
        reset_peak_memory(device)
        times = []
        for i in range(args.warmup + args.repeats):
            t0 = time.perf_counter()
            logs = trainer.step()
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            if i >= args.warmup:
                times.append(time.perf_counter() - t0)
        return {"seconds": statistics.median(times), "peak_gib": peak_memory(device), "bad_steps": logs.get("bad_steps", 0.0),
                "estimate_gib": None if args.tiny else estimate_gib(row, args)}
    except torch.OutOfMemoryError:
        return {"error": "OOM"}
    finally:
        del t2i, trainer
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()


def table(results: dict[Row, dict], device_type: str) -> list[str]:
    memory = "peak GPU memory, GiB" if device_type == "cuda" else "peak RSS during the steps, GiB"
    lines = [f"| configuration | s / outer step | {memory} | estimate, GiB | time / DI++ | memory / DI++ |", "|---|---|---|---|---|---|"]
    for row, res in results.items():
        if "error" in res:
            lines.append(f"| {row.label()} | {res['error']} | {res['error']} | - | - | - |")
            continue
        est = f"{res['estimate_gib']:.2f}" if res.get("estimate_gib") is not None else "-"
        base = results.get(row.baseline, {})
        ratio_t = f"{res['seconds'] / base['seconds']:.2f}" if "seconds" in base else "-"
        ratio_m = f"{res['peak_gib'] / base['peak_gib']:.2f}" if "peak_gib" in base else "-"
        note = f" ({res['bad_steps']:.0f} skipped)" if res.get("bad_steps") else ""
        lines.append(f"| {row.label()} | {res['seconds']:.3f}{note} | {res['peak_gib']:.2f} | {est} | {ratio_t} | {ratio_m} |")
    return lines


def main(argv: list[str] | None = None) -> Path:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--backbones", default="sdxl,zimage")
    p.add_argument("--grid", choices=["axes", "full", "smoke", "check"], default="axes")
    p.add_argument("--resolution", type=int, default=None, help="default: 1024 (16 with --tiny)")
    p.add_argument("--lora-rank", type=int, default=64)
    p.add_argument("--ta-updates", type=int, default=5, help="TA updates per outer step (DMD2's SDXL run: 5)")
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--tiny", action="store_true", help="tiny random pipelines on the CPU (checks the script, not the hardware)")
    p.add_argument("--device", default="auto")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default); 1 on a shared CPU")
    p.add_argument("--cache", default=None, help="where the random-weight folders are written (default: ~/.cache/didr-bench)")
    p.add_argument("--out", default=str(HERE / "results" / "step_cost_t2i.md"))
    args = p.parse_args(argv)
    args.resolution = args.resolution or (16 if args.tiny else 1024)
    quiet_libraries()
    if args.threads:
        torch.set_num_threads(args.threads)
    cache = Path(args.cache or Path.home() / ".cache" / "didr-bench")
    cache.mkdir(parents=True, exist_ok=True)
    rows = grid([b.strip() for b in args.backbones.split(",") if b.strip()], args.grid)
    results: dict[Row, dict] = {}
    device_type = "cpu"
    for row in rows:
        pipe, reward = folders(row.backbone, cache, args.tiny)
        results[row] = measure(row, pipe, reward, args, cache / "work")
        device_type = "cuda" if torch.cuda.is_available() and args.device != "cpu" else "cpu"
        print(row.label(), results[row], flush=True)
    cmd = "python benchmarks/step_cost_t2i.py " + " ".join(argv if argv is not None else sys.argv[1:])
    lines = [
        f"# Seconds and memory per outer DIDR step at {args.resolution} px, against DI++" if not args.tiny else "# Step cost, tiny pipelines (a check of the script)",
        "",
        *Provenance.here(cmd).lines(),
        f"Medians over {args.repeats} outer steps after {args.warmup} warm-up; "
        f"an outer step is {args.ta_updates} TA updates + 1 generator update; {args.resolution} px, bf16 weights and autocast, "
        f"LoRA rank {args.lora_rank}, DMD2-style generator at t = 0.4 (SDXL) / 1 (Z-Image).",
        "",
        *table(results, device_type),
        "",
    ]
    text = "\n".join(lines)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    print(text)
    return out


if __name__ == "__main__":
    main()
