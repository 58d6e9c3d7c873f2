"""``didr train CONFIG.yaml --out DIR [--set section.field=value ...]``: run any experiment."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import yaml

from didr import config as cfgio


def load_run_config(path: str | None, overrides: list[str]):
    from didr.experiments.config import RunConfig

    return cfgio.load(RunConfig, path, overrides)


def run(args: argparse.Namespace) -> int:
    from didr.experiments.registry import EXPERIMENTS

    cfg = load_run_config(args.config, args.set or [])  # validated before anything is written
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.yaml").write_text(yaml.safe_dump(cfgio.to_dict(cfg), sort_keys=False))
    metrics = EXPERIMENTS[cfg.experiment](cfg, out)
    print(json.dumps(metrics, indent=2))
    return 0


def register(sub) -> None:
    p = sub.add_parser("train", help="train a generator from a YAML config", description=__doc__)
    p.add_argument("config", help="YAML run config (see configs/)")
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a config field, e.g. train.steps=200 (repeatable)")
    p.set_defaults(func=run)
