"""Sampling a diffusers pipeline's network with didr's own code: the network under its denoiser
adapter (M2), the backbone's text conditioning and VAE, and a :class:`StepGenerator` over any
times. ``didr sample`` runs a trained generator's export this way; the backbone parity tests run
the stock networks this way against their stock pipelines.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from didr import config as cfgio
from didr.diffusion.denoiser import GuidedDenoiser
from didr.errors import ConfigError, ModelLoadError
from didr.models.backbones import make_denoiser, schedule_from_scheduler
from didr.models.decode import VaeDecoder
from didr.models.generators import StepGenerator
from didr.models.pipeline import AnyScheduler, BackboneConfig, latent_shape, load_component, load_text_encoder
from didr.models.text import PromptSet, encode
from didr.runtime import DTYPES, resolve_device


class Sampler:
    """A pipeline's parts under didr's adapters: the network of ``network_source`` (a folder or hub
    id holding ``unet/`` or ``transformer/``; default the base pipeline's), and the base's VAE,
    scheduler and text encoders (``cfg.pretrained``)."""

    def __init__(self, cfg: BackboneConfig, network_source: str | Path | None = None):
        from diffusers import AutoModel

        self.cfg, self.bb = cfg, cfg.backbone
        self.device, dtype = resolve_device(cfg.device), DTYPES[cfg.dtype]
        source = str(network_source or cfg.pretrained)
        self.net = load_component(self.bb.network_cls(), source, self.bb.network, "the generator's network", dtype=dtype).to(self.device).eval()
        self.vae = load_component(AutoModel, cfg.pretrained, "vae", "backbone.pretrained (vae)", dtype=dtype).to(self.device).eval()
        self.scheduler = load_component(AnyScheduler, cfg.pretrained, "scheduler", "backbone.pretrained (scheduler)")
        self.encoder = load_text_encoder(cfg, self.device, dtype)
        self.shape = latent_shape(cfg, self.vae)
        null = encode(self.encoder, [cfg.negative_prompt])[0]
        self.null = {k: torch.zeros_like(v) for k, v in null.items()} if self.bb.zero_null_prompt and not cfg.negative_prompt else null

    def cond(self, prompts: list[str]) -> dict[str, Any]:
        rows = encode(self.encoder, prompts)
        return PromptSet(prompts, rows, self.null, self.bb.shared_cond(self.cfg)).batch(list(range(len(prompts))), self.device)

    def null_cond(self, cond: dict[str, Any]) -> dict[str, Any]:
        return PromptSet([""], [self.null], self.null, self.bb.shared_cond(self.cfg)).null_cond(cond)

    def denoiser(self, steps: int = 50, prediction: str | None = None):
        """The network's denoiser, on the schedule its scheduler gives for this size and step count;
        it predicts ``prediction`` (default: what the base's scheduler says)."""
        schedule = schedule_from_scheduler(self.scheduler, self.bb.family.name, self.bb.tokens(self.shape), steps)
        prediction = prediction or getattr(self.scheduler.config, "prediction_type", "epsilon") or "epsilon"
        den = make_denoiser(self.net, schedule, self.bb.family.name, prediction, self.cfg.autocast)
        den.guidance = self.cfg.distilled_guidance
        return den

    def reference(self, scale: float, steps: int = 50):
        """The denoiser with CFG (M4) at weight ``scale`` and the backbone's renormalisation, as a run's reference."""
        return GuidedDenoiser(self.denoiser(steps), scale, self.null_cond, self.bb.guidance_rescale(self.cfg))

    def noise(self, n: int, seed: int) -> tuple[Tensor, torch.Generator]:
        """z drawn as a stock pipeline draws its latents from ``generator=Generator().manual_seed(seed)``,
        and the stream, for the noise a generator injects between steps."""
        stream = torch.Generator().manual_seed(seed)
        return torch.randn(n, *self.shape, generator=stream).to(self.device), stream

    @torch.no_grad()
    def sample(self, prompts: list[str], times: list[float], renoise: str = "ddim", seed: int = 0, prediction: str | None = None) -> Tensor:
        """The latents a generator with these times draws for ``prompts`` from seed ``seed``."""
        generator = StepGenerator(self.denoiser(len(times), prediction), times, renoise=renoise).eval()  # eval: every step runs
        z, stream = self.noise(len(prompts), seed)
        return generator(z, self.cond(prompts), stream)

    @torch.no_grad()
    def decode(self, latents: Tensor) -> Tensor:
        """Images (N, 3, H, W) in [-1, 1]."""
        return VaeDecoder(self.vae, micro_batch=self.cfg.decode_micro_batch, decode=self.bb.decode)(latents)


def load_run(run_dir: Path) -> tuple[BackboneConfig, dict]:
    """The run's backbone config (pointed at its tiny models if it built them) and sampling info."""
    if not (run_dir / "config.yaml").is_file():
        raise ConfigError(f"{run_dir} is not a run directory (no config.yaml)")
    info_path = run_dir / "export" / "sampling.json"
    if not info_path.is_file():
        raise ModelLoadError(f"{run_dir}: no export/sampling.json (was the run trained to the end?)")
    section = cfgio.read_yaml(run_dir / "config.yaml").get("backbone") or {}
    cfg = cfgio.from_dict(BackboneConfig, section, "backbone")
    if cfg.tiny:
        cfg.pretrained = str(run_dir / "tiny" / cfg.kind)
    return cfg, json.loads(info_path.read_text())


def sample_images(run_dir: Path, prompts: list[str], seed: int = 0) -> Tensor:
    """Images (N, 3, H, W) in [-1, 1], one per prompt, from a run's exported generator: the same as
    its exported pipeline called with ``generator=torch.Generator().manual_seed(seed)`` and its ``call``."""
    cfg, info = load_run(run_dir)
    sampler = Sampler(cfg, run_dir / "export")
    return sampler.decode(sampler.sample(prompts, info["times"], info.get("renoise", "ddim"), seed, info.get("prediction_type")))


def save_png(image: Tensor, path: Path) -> None:
    from PIL import Image

    array = ((image.clamp(-1, 1) + 1) * 127.5).round().byte().permute(1, 2, 0).cpu().numpy()
    Image.fromarray(array).save(path)
