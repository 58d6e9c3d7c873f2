"""The TA's DSM weighting on the tiny SDXL: per-noise-level TA error before and after a short training.

    python benchmarks/ta_weighting.py                       # 3 seeds x 2 weightings, about 5 minutes
    python benchmarks/ta_weighting.py --steps 100 --seeds 1 # a quick look

Builds the tiny random SDXL pipeline of configs/tiny-sdxl.yaml (the TA a rank-4 LoRA on the frozen
reference UNet, the generator a one-step UNet at t = 0.4) and trains only the TA, by DSM (M5) on fresh
samples of the frozen generator, with each ``train.ta_weighting``:
- native: the UNet's own eps-MSE, lambda(t) = a^2 / s^2 in x_0 units (what SDXL and DMD2's fake
  score were trained with);
- x0: lambda = 1 in x_0 units, which is s^2 / a^2 in eps units.
Every run starts from the same TA and sees the same generator samples, noise levels and noise. The
TA is scored on a fixed held-out set, stratified into 5 buckets of t, by its eps-MSE (the backbone's
own loss) and its x_0-MSE. For scale, the same set is scored with the best linear denoiser of the
generator's distribution (its mean and covariance from --fit samples): the exact posterior mean were
that distribution Gaussian, so no TA can do much better where the distribution is nearly Gaussian.
Writes benchmarks/results/ta_weighting.md, .png and .json (the raw figures).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from didr import config as cfgio
from didr.diffusion.losses import dsm_loss, dsm_weighting, sample_times
from didr.diffusion.schedules import broadcast_to
from didr.eval.report import Provenance
from didr.experiments.config import RunConfig
from didr.experiments.text_to_image import build
from didr.progress import Progress

ROOT = Path(__file__).resolve().parents[1]
WEIGHTINGS = ("native", "x0")
BUCKETS = [(0.0, 0.2), (0.2, 0.4), (0.4, 0.6), (0.6, 0.8), (0.8, 1.0)]


def held_out(t2i, per_bucket: int, seed: int) -> list[dict]:
    """Fixed (x_0, cond, eps, t) per bucket of t, t uniform inside the bucket."""
    gen = torch.Generator().manual_seed(seed)
    sched = t2i.ta.schedule
    out = []
    for lo, hi in BUCKETS:
        z, cond = t2i.sample_inputs(per_bucket, gen)
        with torch.no_grad():
            x0 = t2i.generator(z, cond)
        lo = max(lo, sched.t_min)
        t = lo + (hi - lo) * torch.rand(per_bucket, generator=gen)
        out.append({"x0": x0, "cond": cond, "eps": torch.randn(x0.shape, generator=gen), "t": t})
    return out


class LinearDenoiser:
    """E[x_0 | x_t] for x_0 ~ N(mu, Sigma): mu + a Sigma (a^2 Sigma + s^2 I)^-1 (x_t - a mu), with
    mu and Sigma those of ``n`` generator samples."""

    def __init__(self, t2i, n: int, seed: int):
        gen = torch.Generator().manual_seed(seed)
        xs = []
        with torch.no_grad():
            for _ in range(0, n, 64):
                z, cond = t2i.sample_inputs(64, gen)
                xs.append(t2i.generator(z, cond).reshape(64, -1).double())
        x = torch.cat(xs)[:n]
        self.schedule, self.mu = t2i.ta.schedule, x.mean(0)
        self.lam, self.vecs = torch.linalg.eigh(torch.cov(x.T))

    def __call__(self, x_t, t, cond=None):
        a = self.schedule.alpha(t).double()[:, None]
        s = self.schedule.sigma(t).double()[:, None]
        y = (x_t.reshape(x_t.shape[0], -1).double() - a * self.mu) @ self.vecs
        gain = a * self.lam.clamp_min(0) / (a**2 * self.lam.clamp_min(0) + s**2)
        return (self.mu + (gain * y) @ self.vecs.T).reshape(x_t.shape).float()


@torch.no_grad()
def score(ta, batches: list[dict]) -> tuple[list[float], list[float]]:
    """Per bucket: the TA's eps-MSE and x_0-MSE on the held-out set."""
    eps_mse, x0_mse = [], []
    for b in batches:
        sched = ta.schedule
        x_t = sched.add_noise(b["x0"], b["t"], b["eps"])
        d = ta(x_t, b["t"], b["cond"])
        a, s = broadcast_to(sched.alpha(b["t"]), x_t), broadcast_to(sched.sigma(b["t"]), x_t)
        eps_hat = (x_t - a * d) / s
        eps_mse.append(float(((eps_hat - b["eps"]) ** 2).mean()))
        x0_mse.append(float(((d - b["x0"]) ** 2).mean()))
    return eps_mse, x0_mse


def train_ta(t2i, weighting: str, steps: int, batch: int, lr: float, seed: int) -> None:
    """``steps`` DSM updates of the TA's LoRA on fresh samples of the frozen generator."""
    params = [p for p in t2i.ta.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr, betas=(0.0, 0.999), weight_decay=0.0)  # the loop's defaults
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)  # dsm_loss draws its noise from the global stream
    bar = Progress(steps, f"TA {weighting} seed {seed}")
    for _ in range(steps):
        z, cond = t2i.sample_inputs(batch, gen)
        with torch.no_grad():
            x0 = t2i.generator(z, cond)
        t = sample_times(batch, t2i.ta.schedule, generator=gen)
        loss = dsm_loss(t2i.ta, x0, t, cond, weighting=dsm_weighting(weighting)).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        bar.update(1)
    bar.close()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=300, help="TA updates per run")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--eval", type=int, default=64, help="held-out samples per bucket of t")
    p.add_argument("--fit", type=int, default=4096, help="generator samples for the linear denoiser's mean and covariance")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "ta_weighting.md"))
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    overrides = ["backbone.gradient_checkpointing=false", "backbone.decode_checkpoint=false"]
    cfg = cfgio.load(RunConfig, ROOT / "configs" / "tiny-sdxl.yaml", overrides)
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        t2i = build(cfg.backbone, Path(tmp))
    ta_start = {n: p.detach().clone() for n, p in t2i.ta.named_parameters() if p.requires_grad}
    batches = held_out(t2i, args.eval, seed=10_000)
    before = score(t2i.ta, batches)
    linear = score(LinearDenoiser(t2i, args.fit, seed=20_000), batches)
    after: dict[str, list[tuple[list[float], list[float]]]] = {w: [] for w in WEIGHTINGS}
    for seed in range(args.seeds):
        for w in WEIGHTINGS:
            with torch.no_grad():
                for n, p in t2i.ta.named_parameters():
                    if n in ta_start:
                        p.copy_(ta_start[n])
            t2i.ta.train()
            train_ta(t2i, w, args.steps, args.batch, args.lr, seed)
            t2i.ta.eval()
            after[w].append(score(t2i.ta, batches))
    minutes = (time.perf_counter() - start) / 60
    text = report(args, before, after, linear, minutes)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    plot(before, after, linear, out.with_suffix(".png"))
    raw = {"buckets": BUCKETS, "before": before, "linear": linear, "after": after, "args": vars(args)}
    out.with_suffix(".json").write_text(json.dumps(raw, indent=1))
    print(text)


def _cell(values: list[float]) -> str:
    mean = statistics.fmean(values)
    return f"{mean:.3g} ± {statistics.stdev(values):.2g}" if len(values) > 1 else f"{mean:.3g}"


def report(args, before, after, linear, minutes: float) -> str:
    cmd = (f"python benchmarks/ta_weighting.py --steps {args.steps} --batch {args.batch} --lr {args.lr:g} --seeds {args.seeds} "
           f"--eval {args.eval} --fit {args.fit} --threads {args.threads}")
    lines = [
        "# The TA's DSM weighting on the tiny SDXL",
        "",
        *Provenance.here(cmd, f"{minutes:.1f} minutes in all, other work sharing the machine").lines(),
        "",
        "The tiny random SDXL of `configs/tiny-sdxl.yaml`: the TA (a rank-4 LoRA on the frozen reference UNet) is "
        f"trained alone for {args.steps} DSM steps (batch {args.batch}, AdamW lr {args.lr:g}) on fresh samples of the frozen "
        "one-step generator, from the same start, under each `train.ta_weighting`. Scored on "
        f"{args.eval} held-out samples per bucket of t (mean ± sd over {args.seeds} seeds; the held-out set is fixed). "
        f"`linear`: the best linear denoiser of the generator's distribution (mean and covariance of {args.fit} samples).",
        "",
        "| t bucket | eps-MSE before | after, native | after, x0 | linear | x0-MSE before | after, native | after, x0 | linear |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for k, (lo, hi) in enumerate(BUCKETS):
        row = [f"[{lo:.1f}, {hi:.1f})", f"{before[0][k]:.3g}"]
        row += [_cell([r[0][k] for r in after[w]]) for w in WEIGHTINGS] + [f"{linear[0][k]:.3g}"]
        row += [f"{before[1][k]:.4g}"] + [_cell([r[1][k] for r in after[w]]) for w in WEIGHTINGS] + [f"{linear[1][k]:.4g}"]
        lines.append("| " + " | ".join(row) + " |")
    lines += ["", "Share of the gap to the linear denoiser's eps-MSE that training closed, (before - after) / (before - linear):", "",
              "| t bucket | native | x0 |", "|---|---|---|"]
    for k, (lo, hi) in enumerate(BUCKETS):
        closed = gap_closed(before, after, linear, k)
        lines.append(f"| [{lo:.1f}, {hi:.1f}) | {_cell(closed[WEIGHTINGS[0]])} | {_cell(closed[WEIGHTINGS[1]])} |")
    lines.append("")
    return "\n".join(lines)


def gap_closed(before, after, linear, k: int) -> dict[str, list[float]]:
    """Per weighting and seed: the share of the eps-MSE gap to the linear denoiser that training closed in bucket k."""
    gap = before[0][k] - linear[0][k]
    return {w: [(before[0][k] - r[0][k]) / gap for r in after[w]] for w in WEIGHTINGS}


def plot(before, after, linear, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    centres = [(lo + hi) / 2 for lo, hi in BUCKETS]
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    left.plot(centres, before[0], "k--o", label="before")
    left.plot(centres, linear[0], ":", color="grey", marker="s", label="linear denoiser")
    for w, colour in zip(WEIGHTINGS, ("tab:blue", "tab:orange")):
        left.plot(centres, [statistics.fmean(r[0][k] for r in after[w]) for k in range(len(BUCKETS))], "-o", color=colour, label=f"after, {w}")
        shares = [gap_closed(before, after, linear, k)[w] for k in range(len(BUCKETS))]
        offset = -0.025 if w == WEIGHTINGS[0] else 0.025
        right.bar([c + offset for c in centres], [statistics.fmean(v) for v in shares], width=0.05, color=colour, label=w,
                  yerr=[statistics.stdev(v) if len(v) > 1 else 0 for v in shares], capsize=3)
    left.set(xlabel="t (bucket centre)", ylabel="eps-MSE", yscale="log", title="TA eps-MSE (the UNet's own loss)")
    right.set(xlabel="t (bucket centre)", ylabel="share of the gap closed", title="(before - after) / (before - linear)")
    left.legend()
    right.legend(title="ta_weighting")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    sys.exit(main())
