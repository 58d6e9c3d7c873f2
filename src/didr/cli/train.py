"""``didr train CONFIG.yaml --out DIR [--set section.field=value ...] [--resume]``: run any experiment.

    didr train configs/toy.yaml --out runs/toy
    didr train configs/toy.yaml --out runs/toy --resume --set train.steps=1200   # continue, longer
    torchrun --standalone --nproc_per_node 2 -m didr train configs/toy.yaml --out runs/toy2      # data parallel
    accelerate launch --config_file configs/accelerate/fsdp2.yaml --num_processes 2 -m didr train configs/tiny-sdxl.yaml --out runs/s2  # sharded

Writes ``DIR/config.yaml``, ``DIR/train.log`` (with the number of processes in effect),
``DIR/metrics.jsonl``, checkpoints under ``DIR/checkpoints/`` and the final generator under
``DIR/export/``. The config is validated, with ``--resume`` checked against the latest good
checkpoint, and the experiment's models loaded and checked, before anything is written. SIGTERM / SIGINT save a checkpoint and exit with status
128 + the signal's number.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import yaml

from didr import config as cfgio
from didr.errors import ConfigError
from didr.experiments.config import RunConfig
from didr.experiments.registry import EXPERIMENTS
from didr.files import atomic_write_text
from didr.runtime import is_main_process
from didr.train.checkpoint import check_resumable, latest_state, require_usable
from didr.train.distributed import check_launch
from didr.train.signals import Interrupted


def check_resume(out: Path, cfg: RunConfig) -> None:
    """Compare the config with the latest good checkpoint's (bad ones are skipped with a warning)."""
    found = latest_state(out / "checkpoints")
    if found is None:
        require_usable(out / "checkpoints")
        return
    path, state = found
    saved = state.get("config", {}).get("run")
    if saved is not None:
        check_resumable(saved, cfgio.to_dict(cfg), path)


def run(args: argparse.Namespace) -> int:
    check_launch()  # DeepSpeed, FSDP1 and FSDP settings didr does not implement: refused before anything is written
    cfg = cfgio.load(RunConfig, args.config, args.set or [])  # validated before anything is written
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out}: exists and is not a directory")
    cfg.train.resume = cfg.train.resume or args.resume
    if cfg.train.resume:
        check_resume(out, cfg)
    experiment = EXPERIMENTS[cfg.experiment]
    prepared = experiment.prepare(cfg, out)  # the models loaded and checked: a refusal leaves OUT as it was
    if is_main_process():
        out.mkdir(parents=True, exist_ok=True)
        atomic_write_text(yaml.safe_dump(cfgio.to_dict(cfg), sort_keys=False), out / "config.yaml")
    try:
        metrics = experiment.run(cfg, out, prepared)
    except Interrupted as stop:
        print(f"didr train: {stop}", file=sys.stderr)
        return 128 + int(stop.signum)
    if is_main_process():
        print(json.dumps(metrics, indent=2))
    return 0


def register(sub) -> None:
    p = sub.add_parser("train", help="train a generator from a YAML config", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("config", help="YAML run config (see configs/)")
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a config field, e.g. train.steps=200 (repeatable)")
    p.add_argument("--resume", action="store_true", help="continue from the latest good checkpoint under OUT/checkpoints/")
    p.set_defaults(func=run)
