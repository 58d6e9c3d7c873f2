"""Every backbone against its stock diffusers pipeline, on tiny random weights (float32, CPU): the
max abs difference of images in [0, 1] for each comparison of didr.testing.parity (one- and
few-step samples, the reference's x0 with and without guidance), and for each kind's exported
pipeline, ``DiffusionPipeline.from_pretrained(OUT/export)(prompt, generator, **call)``, against
``didr sample`` after ``didr train configs/tiny-<kind>.yaml``.

    python benchmarks/backbone_parity.py            # writes benchmarks/results/backbone_parity.md
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import torch

from didr.cli import main as didr
from didr.eval.report import Provenance, markdown_table, write_report
from didr.models.backbones import BACKBONES
from didr.runtime import quiet_libraries
from didr.testing.parity import CASES, PROMPTS, Parity

ROOT = Path(__file__).resolve().parents[1]


def pipeline_rows(work: Path) -> list[list[str]]:
    rows = []
    for name, case in CASES.items():
        parity = Parity.build(case, work / name)
        for what, (ours, theirs) in parity.comparisons().items():
            rows.append([name, parity.bb.pipeline_class, what, f"{(ours - theirs).abs().max().item():.1e}"])
            print(" | ".join(rows[-1]), flush=True)
    return rows


def export_rows(work: Path) -> list[list[str]]:
    import diffusers

    from didr.models.sample import sample_images

    rows = []
    for kind in BACKBONES:
        out = work / f"run-{kind}"
        sets = ["train.steps=1", *(["backbone.generator_steps=2"] if kind == "zimage" else [])]
        assert didr(["train", str(ROOT / "configs" / f"tiny-{kind}.yaml"), "--out", str(out), *(a for s in sets for a in ("--set", s))]) == 0
        info = json.loads((out / "export" / "sampling.json").read_text())
        pipe = diffusers.DiffusionPipeline.from_pretrained(out / "export")
        pipe.set_progress_bar_config(disable=True)
        theirs = pipe(prompt=list(PROMPTS), generator=torch.Generator().manual_seed(7), output_type="pt", **info["call"]).images
        ours = ((sample_images(out, list(PROMPTS), 7) + 1) / 2).clamp(0, 1)
        call = ", ".join(f"{k}={v}" for k, v in info["call"].items() if k not in ("height", "width"))
        rows.append([kind, info["pipeline"], info["scheduler"], call, f"{(ours - theirs).abs().max().item():.1e}"])
        print(" | ".join(rows[-1]), flush=True)
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "backbone_parity.md"))
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    quiet_libraries()
    with tempfile.TemporaryDirectory() as work:
        parity, export = pipeline_rows(Path(work)), export_rows(Path(work))
    sections = [
        "Images in [0, 1] at 16 px, two prompts, float32; max abs difference over every pixel. The parity tests "
        "(`tests/models/backbones/test_parity.py`, `tests/experiments/test_text_to_image.py`) assert 2e-5 and 1e-5.",
        "## didr's sampling against the stock pipeline\n\n" + markdown_table(["case", "pipeline", "comparison", "max abs diff"], parity),
        "Cases: " + "; ".join(f"**{n}**: {c.note}" for n, c in CASES.items()) + ".",
        "## The exported pipeline, called with its recorded `call`, against `didr sample`\n\n"
        + markdown_table(["kind", "pipeline", "exported scheduler", "call", "max abs diff"], export),
    ]
    path = write_report(Path(args.out), "Backbones against their stock diffusers pipelines",
                        Provenance.here("python benchmarks/backbone_parity.py", "1 torch thread"), sections)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
