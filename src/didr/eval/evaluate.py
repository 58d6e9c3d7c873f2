"""``didr eval``: generators side by side on one prompt set, one set of seeds and one set of rewards.

    didr eval runs/zimage-1 Tongyi-MAI/Z-Image?steps=50&guidance=4&name=teacher \\
        --prompts prompts.txt --reward pickscore --reward hpsv2 --seeds 4 --base teacher --out evals/zimage

Each generator (:mod:`didr.eval.generators`) draws one image per prompt and seed into
``OUT/images/NAME/``; the images are scored by :func:`didr.eval.score.score_images`, the code behind
``didr score``, so the per-image scores are the ones ``didr score`` gives for those files. Then:

- per generator and reward, the mean with a 95% bootstrap interval over prompts (:mod:`didr.eval.stats`);
- per generator against the base (``--base``, default the first): the paired per-image difference and
  the win rate, with intervals, and the drift: the RMS pixel difference of images drawn from the
  same prompt and seed (the same initial noise when the latent shapes agree);
- with ``--features`` (a model the user has: ``clip:REF``, ``dinov2:REF``, ``inception:FILE``), per
  generator the diversity across seeds and the feature drift from the base, and with ``--reference``
  (a generator's name, e.g. the teacher's, or a folder of real images) the Fréchet distance and KID
  to that set (:mod:`didr.eval.fidelity`);
- a protocol block (:mod:`didr.eval.protocol`) with everything that decides the numbers.

Written: ``scores.csv`` (one row per image), ``metrics.json``, ``report.md`` (a table in the
layout of a paper's results table, then the comparisons and the protocol) and ``grid.png``
(prompts x generators, the first seed).
"""

from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from didr.config import require
from didr.data.prompt_sets import PromptSet, load_prompt_set
from didr.errors import ConfigError
from didr.eval.features import load_features
from didr.eval.fidelity import fidelity_metrics, image_features, reference_features
from didr.eval.generators import GeneratorSpec, check_changes, parse_generator, sample_images
from didr.eval.plots import image_grid
from didr.eval.protocol import build_protocol, reward_entry
from didr.eval.report import markdown_table, write_report
from didr.eval.score import load_image, named_rewards, score_images
from didr.eval.stats import Interval, difference_interval, mean_interval, win_rate_interval
from didr.files import atomic_write_text
from didr.progress import Progress
from didr.rewards.registry import check_reward_reference
from didr.runtime import DTYPES, resolve_device


@dataclass
class EvalConfig:
    generators: list[str]
    out: str
    prompts: str = "builtin"
    rewards: list[str] = field(default_factory=lambda: ["pickscore"])
    seeds: int = 2  # seeds 0 .. seeds - 1 (offset by seed_base) for every prompt
    seed_base: int = 0
    limit: int = 0  # the first N prompts (0 = all)
    categories: list[str] = field(default_factory=list)  # only the prompts of these categories (PartiPrompts, DrawBench, ...)
    features: str | None = None  # feature model for diversity, drift and fidelity: clip:REF | dinov2:REF | inception:FILE
    reference: str | None = None  # the fidelity reference set: a generator's name or a folder of images (needs features)
    resolution: int | None = None
    base: str | None = None  # the generator the others are compared with (default: the first)
    device: str = "auto"
    dtype: str = "float32"  # the pipelines' weights; the rewards load as their specs say
    batch: int = 4
    progress: bool = True

    def validate(self) -> None:
        require(len(self.generators) >= 1, "generators", "give at least one generator")
        require(self.seeds >= 1, "--seeds", f"must be >= 1, got {self.seeds}")
        require(self.limit >= 0, "--limit", f"must be >= 0, got {self.limit}")
        require(self.batch >= 1, "--batch", f"must be >= 1, got {self.batch}")
        require(self.dtype in DTYPES, "--dtype", f"must be one of {', '.join(DTYPES)}, got {self.dtype!r}")
        require(bool(self.rewards), "--reward", "give at least one reward")
        require(self.reference is None or self.features is not None, "--reference", "fidelity is measured in features: give --features too")


@dataclass
class Scores:
    """Per reward, a (prompts, seeds) grid of one generator's scores."""

    generator: GeneratorSpec
    files: list[Path]
    by_reward: dict[str, np.ndarray]


def prepare(cfg: EvalConfig) -> tuple[PromptSet, list[int], list[GeneratorSpec]]:
    """Everything checked before an image is drawn: prompts, seeds, generators, reward specs."""
    cfg.validate()
    prompts = load_prompt_set(cfg.prompts, limit=cfg.limit or None, categories=cfg.categories or None)
    seeds = list(range(cfg.seed_base, cfg.seed_base + cfg.seeds))
    specs = [parse_generator(g, cfg.resolution) for g in cfg.generators]
    names = [s.name for s in specs]
    if len(set(names)) != len(names):
        raise ConfigError(f"generators: two share a name ({', '.join(names)}); give each ?name=...")
    if cfg.base is not None and cfg.base not in names:
        raise ConfigError(f"--base {cfg.base!r}: not one of the generators ({', '.join(names)})")
    for spec in specs:
        check_changes(spec)
    for spec in cfg.rewards:
        check_reward_reference(spec)
    return prompts, seeds, specs


def run_eval(cfg: EvalConfig) -> dict[str, Any]:
    """Draw, score and compare; write the outputs under ``cfg.out``; return the metrics."""
    prompt_set, seeds, specs = prepare(cfg)
    prompts, out = prompt_set.prompts, Path(cfg.out)
    device = resolve_device(cfg.device)
    features = load_features(cfg.features, device=device) if cfg.features else None
    bar = Progress(len(specs) * len(prompts) * len(seeds), "eval: drawing images", enabled=cfg.progress)
    files = {s.name: sample_images(s, prompts, seeds, out / "images" / s.name, device=device, dtype=DTYPES[cfg.dtype], batch=cfg.batch,
                                   progress=bar.update) for s in specs}
    bar.close()
    rewards = named_rewards(cfg.rewards, device, None)
    per_image = [p for p in prompts for _ in seeds]
    scores = {s.name: score_generator(s, files[s.name], per_image, rewards, (len(prompts), len(seeds))) for s in specs}
    base = cfg.base or specs[0].name
    fidelity = measure_fidelity(features, cfg.reference, files, len(seeds), base) if features is not None else None
    protocol = build_protocol(
        prompts={"count": len(prompts), "sha256": prompt_set.sha256}, prompt_source={**prompt_set.describe(), "source": cfg.prompts}, seeds=seeds,
        resolution=sorted({tuple(load_image(f[0]).shape[1:]) for f in files.values()}), dtype=cfg.dtype,
        rewards={name: reward_entry(spec, rewards[name]) for name, spec in zip(rewards, cfg.rewards)}, reward_specs=cfg.rewards,
        generators={s.name: s.describe() for s in specs}, features=features.describe() if features is not None else None)
    metrics = summarise(scores, base, protocol)
    if fidelity is not None:
        metrics["fidelity"] = fidelity
    write_outputs(out, prompts, seeds, scores, metrics)
    return metrics


def measure_fidelity(features, reference: str | None, files: dict[str, list[Path]], seeds: int, base: str) -> dict:
    feats = {name: image_features(features, f) for name, f in files.items()}
    ref, described = reference_features(features, reference, feats) if reference else (None, None)
    return {"reference": described, "generators": fidelity_metrics(feats, ref, seeds, base)}


def score_generator(spec: GeneratorSpec, files: list[Path], per_image: list[str], rewards: dict, shape: tuple[int, int]) -> Scores:
    result = score_images(files[0].parent, rewards, prompts=per_image)
    if result.files != [f.name for f in files]:
        raise ConfigError(f"{files[0].parent}: holds images other than this evaluation's; give a fresh --out")
    return Scores(spec, files, {name: np.asarray(v, dtype=np.float64).reshape(shape) for name, v in result.scores.items()})


def pixel_drift(a: list[Path], b: list[Path], shape: tuple[int, int]) -> Interval | None:
    """RMS difference in [-1, 1] between images of the same prompt and seed; None when their sizes differ."""
    ia, ib = [load_image(f) for f in a], [load_image(f) for f in b]
    if any(x.shape != y.shape for x, y in zip(ia, ib)):
        return None
    return drift_interval(torch.stack(ia), torch.stack(ib), shape)


def drift_interval(images: Tensor, base: Tensor, shape: tuple[int, int]) -> Interval:
    """The mean over images of the RMS difference between ``images`` and ``base`` (the same prompt and
    seed, (N, ...) in [-1, 1], laid out as ``shape`` = (prompts, seeds)), with its interval."""
    return mean_interval(((images - base) ** 2).flatten(1).mean(1).sqrt().double().numpy().reshape(shape))


def summarise(scores: dict[str, Scores], base: str, protocol: dict) -> dict[str, Any]:
    generators, comparisons = {}, []
    for name, sc in scores.items():
        shape = next(iter(sc.by_reward.values())).shape
        entry: dict[str, Any] = {"rewards": {r: mean_interval(v).to_dict() for r, v in sc.by_reward.items()}, "call": sc.generator.call}
        if name != base:
            drift = pixel_drift(sc.files, scores[base].files, shape)
            entry["pixel_drift_from_base"] = drift.to_dict() if drift is not None else None
            for r, v in sc.by_reward.items():
                ref = scores[base].by_reward[r]
                comparisons.append({"generator": name, "against": base, "reward": r, "difference": difference_interval(v, ref).to_dict(),
                                    "win_rate": win_rate_interval(v, ref).to_dict()})
        generators[name] = entry
    return {"protocol": protocol, "base": base, "generators": generators, "comparisons": comparisons}


def write_outputs(out: Path, prompts: list[str], seeds: list[int], scores: dict[str, Scores], metrics: dict) -> None:
    atomic_write_text(scores_csv(prompts, seeds, scores), out / "scores.csv")
    atomic_write_text(json.dumps(metrics, indent=2), out / "metrics.json")
    first = {name: [sc.files[i * len(seeds)] for i in range(len(prompts))] for name, sc in scores.items()}
    image_grid(first, prompts, out / "grid.png")
    write_report(out / "report.md", "Evaluation", None, report_sections(metrics))


def scores_csv(prompts: list[str], seeds: list[int], scores: dict[str, Scores]) -> str:
    buffer = io.StringIO()
    rewards = list(next(iter(scores.values())).by_reward)
    writer = csv.writer(buffer)
    writer.writerow(["generator", "prompt_index", "prompt", "seed", "file", *rewards])
    for name, sc in scores.items():
        for i, prompt in enumerate(prompts):
            for j, seed in enumerate(seeds):
                f = sc.files[i * len(seeds) + j]
                writer.writerow([name, i, prompt, seed, f"images/{name}/{f.name}", *(repr(float(sc.by_reward[r][i, j])) for r in rewards)])
    return buffer.getvalue()


def _cell(d: dict | None) -> str:
    return "-" if d is None else Interval(d["estimate"], d["low"], d["high"], d["level"]).format()


def report_sections(metrics: dict) -> list[str]:
    proto, gens = metrics["protocol"], metrics["generators"]
    rewards = list(proto["rewards"])
    rows = [[name, _steps(g["call"]), *(_cell(g["rewards"][r]) for r in rewards), _cell(g.get("pixel_drift_from_base"))] for name, g in gens.items()]
    table = markdown_table(["generator", "steps", *rewards, f"pixel drift from {metrics['base']}"], rows)
    comp = markdown_table(["generator", "against", "reward", "mean difference", "win rate"],
                          [[c["generator"], c["against"], c["reward"], _cell(c["difference"]), _cell(c["win_rate"])] for c in metrics["comparisons"]])
    head = (f"{proto['prompts']['count']} prompts (`{proto['prompt_source']['source']}`, sha256 {proto['prompts']['sha256'][:12]}) x "
            f"{len(proto['seeds'])} seeds; means with 95% bootstrap intervals over prompts, seeds paired.")
    protocol_block = "## Protocol\n\n```json\n" + json.dumps(proto, indent=2) + "\n```"
    return [head, table, "## Against the base, image by image\n\n" + comp, fidelity_section(metrics), "![grid](grid.png)", protocol_block]


def fidelity_section(metrics: dict) -> str:
    fid = metrics.get("fidelity")
    if fid is None:
        return ""
    cols = [("fd", "FD"), ("kid", "KID"), ("kid_std", "KID std"), ("diversity", "diversity"), ("feature_drift_from_base", "drift from base")]
    rows = [[name, g["images"], *(f"{g[k]:.4g}" if k in g else "-" for k, _ in cols)] for name, g in fid["generators"].items()]
    where = metrics["protocol"]["features"]["features"]
    ref = fid["reference"] or "none"
    return (f"## Fidelity, diversity and drift in {where} features\n\nReference set: {ref}. FD and KID grow as the sets shrink: "
            "compare them at equal counts only.\n\n" + markdown_table(["generator", "images", *(c for _, c in cols)], rows))


def _steps(call: dict) -> str:
    for key in ("timesteps", "sigmas"):
        if key in call:
            return str(len(call[key]))
    return str(call.get("num_inference_steps", "default"))


def load_metrics(folder: Path) -> dict:
    path = Path(folder) / "metrics.json" if Path(folder).is_dir() else Path(folder)
    if not path.is_file():
        raise ConfigError(f"{folder}: no metrics.json (an output folder of didr eval)")
    return json.loads(path.read_text())



