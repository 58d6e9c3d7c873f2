"""A text-to-image run from a config, through the Python API: build, train, export, sample.

    python examples/text_to_image.py                                  # the tiny random SDXL, seconds on a CPU
    python examples/text_to_image.py --config configs/sdxl-dmd2-1step.yaml --out runs/sdxl --steps 1000   # real weights

The config is the one ``didr train`` reads; ``--set`` overrides any field. The run writes its
checkpoints and the exported generator under ``--out``, then samples one image per prompt from the
export, as ``didr sample`` does.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import yaml

from didr import config as cfgio
from didr.experiments.config import RunConfig
from didr.experiments.text_to_image import build, build_run_objective
from didr.models.export import export_generator
from didr.models.sample import sample_images, save_png
from didr.train import Alignment, Trainer

ROOT = Path(__file__).resolve().parents[1]


def main(argv: list[str] | None = None) -> list[Path]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default=str(ROOT / "configs" / "tiny-sdxl.yaml"))
    p.add_argument("--out", default="runs/example-t2i")
    p.add_argument("--steps", type=int, default=2)
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    args = p.parse_args(argv)

    cfg = cfgio.load(RunConfig, args.config, [f"train.steps={args.steps}", *args.set])
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.yaml").write_text(yaml.safe_dump(cfgio.to_dict(cfg), sort_keys=False))  # what `didr sample` reads

    t2i = build(cfg.backbone, out)  # the reference pipeline, the generator, the TA, the prompts and the reward, checked
    alignment = Alignment(t2i.generator, t2i.reference, t2i.ta, build_run_objective(cfg, t2i), t2i.sample_inputs)
    trainer = Trainer(alignment, cfg.train, out, desc=f"{cfg.method.name} {cfg.backbone.kind}")
    logs = trainer.run()
    export_generator(t2i, trainer.sampling_generator, out / "export")
    print("last logged:", {k: round(v, 4) for k, v in logs.items()})

    prompts = list(cfg.backbone.prompt_list)[:2] or ["a photo of a cat"]
    images = sample_images(out, prompts, seed=0)
    paths = []
    for i, image in enumerate(images):
        paths.append(out / f"sample_{i}.png")
        save_png(image, paths[-1])
    print(f"{len(paths)} images in {out}")
    return paths


if __name__ == "__main__":
    main()
