"""Images from a trained text-to-image generator: a ``didr train`` run's export, sampled with the
generator's own steps (:class:`didr.models.generators.StepGenerator`).

Reads the run's ``config.yaml`` (its backbone section) and ``export/`` (the network folder and
``sampling.json``), and loads the VAE, text encoders and scheduler from the run's
``backbone.pretrained`` (its tiny models under ``RUN/tiny/`` when it built them).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from didr import config as cfgio
from didr.errors import ConfigError, ModelLoadError
from didr.models.backbones import make_denoiser, schedule_from_scheduler
from didr.models.decode import VaeDecoder
from didr.models.generators import StepGenerator
from didr.models.pipeline import AnyScheduler, BackboneConfig, load_component, load_text_encoder
from didr.models.text import PromptSet, encode_cached
from didr.runtime import DTYPES, resolve_device


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


@torch.no_grad()
def sample_images(run_dir: Path, prompts: list[str], seed: int = 0) -> torch.Tensor:
    """Images (N, 3, H, W) in [-1, 1], one per prompt."""
    from diffusers import AutoencoderKL

    cfg, info = load_run(run_dir)
    bb, device, dtype = cfg.backbone, resolve_device(cfg.device), DTYPES[cfg.dtype]
    net = load_component(bb.network_cls(), str(run_dir / "export"), bb.network, "exported generator").to(device).eval()
    vae = load_component(AutoencoderKL, cfg.pretrained, "vae", "backbone.pretrained (vae)", torch_dtype=dtype).to(device).eval()
    scheduler = load_component(AnyScheduler, cfg.pretrained, "scheduler", "backbone.pretrained (scheduler)")
    rows = encode_cached(load_text_encoder(cfg, device, dtype), f"{cfg.kind}:{cfg.pretrained}", prompts, None)
    cond = PromptSet(prompts, rows, rows[0], bb.shared_cond(cfg)).batch(list(range(len(prompts))), device)
    schedule = schedule_from_scheduler(scheduler, bb.family.name)
    pred = getattr(scheduler.config, "prediction_type", "epsilon") or "epsilon"
    den = make_denoiser(net, schedule, bb.family.name, pred, cfg.autocast)
    generator = StepGenerator(den, info["times"], renoise=info.get("renoise", "ddim")).eval()  # eval: every step runs
    z = torch.randn(len(prompts), *info["latent_shape"], generator=torch.Generator().manual_seed(seed)).to(device)
    torch.manual_seed(seed)  # the noise between steps when renoise is "fresh"
    return VaeDecoder(vae, micro_batch=cfg.decode_micro_batch)(generator(z, cond))


def save_png(image: torch.Tensor, path: Path) -> None:
    from PIL import Image

    array = ((image.clamp(-1, 1) + 1) * 127.5).round().byte().permute(1, 2, 0).cpu().numpy()
    Image.fromarray(array).save(path)
