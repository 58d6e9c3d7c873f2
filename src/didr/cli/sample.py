"""``didr sample RUN_DIR --prompt TEXT [--prompts FILE] --out DIR``: images from a trained generator,
one PNG per image (:mod:`didr.models.sample`)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from didr.errors import ConfigError
from didr.models.sample import sample_images, save_png
from didr.models.text import load_prompts


def run(args: argparse.Namespace) -> int:
    prompts = list(args.prompt or []) + (load_prompts(args.prompts) if args.prompts else [])
    if not prompts:
        raise ConfigError("give --prompt TEXT (repeatable) or --prompts FILE")
    prompts = [p for p in prompts for _ in range(args.per_prompt)]
    out = Path(args.out)
    images = sample_images(Path(args.run), prompts, args.seed)
    out.mkdir(parents=True, exist_ok=True)
    for i, image in enumerate(images):
        save_png(image, out / f"{i:05d}.png")
    (out / "prompts.json").write_text(json.dumps(prompts, indent=1))
    print(f"{len(prompts)} images in {out}")
    return 0


def register(sub) -> None:
    p = sub.add_parser("sample", help="sample images from a trained text-to-image generator", description=__doc__)
    p.add_argument("run", help="run directory of `didr train` (holds config.yaml and export/)")
    p.add_argument("--prompt", action="append", help="a prompt (repeatable)")
    p.add_argument("--prompts", help="prompt file: .txt (one per line) or .jsonl")
    p.add_argument("--per-prompt", type=int, default=1, help="images per prompt")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", required=True, help="output folder for the PNGs")
    p.set_defaults(func=run)
