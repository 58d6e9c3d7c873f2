"""``didr score``: score a folder of images against their prompts with any set of rewards.

    didr score samples/ -r pickscore:/models/PickScore_v1 --prompts prompts.txt -o scores.csv
    didr score samples/ -r hpsv2:/models/HPS_v2.1_compressed.pt -r aesthetic:/models/aesthetic -o scores.json

See :mod:`didr.eval.score` for where prompts come from and what is written.
"""

from __future__ import annotations

import argparse

import torch

from didr.errors import ConfigError
from didr.eval import score as scoring
from didr.eval.score import score_images


def register(subparsers) -> None:
    p = subparsers.add_parser("score", help="score a folder of images with reward models", description=scoring.__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("folder", help="folder of images (png, jpg, webp, bmp)")
    p.add_argument("-r", "--reward", action="append", required=True, metavar="SPEC",
                   help="reward spec, repeatable: pickscore[:PATH], hpsv2[:PATH], imagereward[:PATH], aesthetic:PATH, clipscore[:PATH], py:MODULE:ATTR")
    p.add_argument("--prompts", metavar="FILE", help="prompt file: matched by image name (a .json object; .json/.jsonl/.csv records with "
                   "file and prompt), or a prompt set in sorted file order (.txt, .jsonl, .json, .csv, .tsv, .parquet, a benchmark's layout)")
    p.add_argument("--prompt", metavar="TEXT", help="one prompt for every image")
    p.add_argument("-o", "--output", metavar="FILE", help="write per-image scores to FILE (.csv or .json)")
    p.add_argument("--batch-size", type=int, default=8, help="images per reward call (default 8)")
    p.add_argument("--device", default=None, help="torch device (default: cuda if available, else cpu)")
    p.add_argument("--dtype", default=None, choices=["float32", "float16", "bfloat16"], help="reward model precision (default float32)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if args.prompts and args.prompt:
        raise ConfigError("give --prompts or --prompt, not both")
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    result = score_images(args.folder, args.reward, prompts=args.prompts, prompt=args.prompt,
                          batch_size=args.batch_size, device=device, dtype=args.dtype)
    print(result.table())
    if args.output:
        print(f"wrote {result.save(args.output)}")
    return 0
