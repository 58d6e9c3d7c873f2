"""Text-to-image alignment on diffusers backbones (SDXL with DMD2's one-step UNet, Z-Image, ...).

    didr train configs/tiny-sdxl.yaml --out runs/tiny-sdxl      # tiny random models, CPU, seconds
    didr train configs/sdxl-dmd2-1step.yaml --out runs/sdxl     # real weights

:func:`build` wires a run from the ``backbone`` section, all checked before the first training
step: the reference pipeline (:mod:`didr.models.pipeline`), the generator (a distilled network, or
the reference, at fixed times), the TA (a LoRA on the frozen reference, or a full copy), the
prompt set with embeddings cached on disk, and the latent reward reward(vae_decode(x_0), prompts).
After training the generator is exported under ``OUT/export`` (:mod:`didr.models.export`).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from didr.diffusion.denoiser import GuidedDenoiser
from didr.models.backbones import make_denoiser, schedule_from_scheduler
from didr.models.decode import LatentReward, VaeDecoder
from didr.models.export import export_generator
from didr.models.generators import StepGenerator, generator_times
from didr.models.lora import FrozenCopy, add_lora, frozen_initial
from didr.models.pipeline import (
    BackboneConfig,
    Pipeline,
    add_generator_adapter,
    build_prompts,
    check_compatible,
    latent_shape,
    load_generator_net,
    load_pipeline,
)
from didr.models.shared import SharedDenoiser, enable_checkpointing
from didr.models.text import PromptSet
from didr.objectives.config import build_objective
from didr.rewards.registry import load_reward
from didr.runtime import resolve_device
from didr.testing.tiny import TINY_BUILDERS, build_once, save_tiny_clip
from didr.train.loop import Alignment, Trainer


def prepare_tiny(cfg: BackboneConfig, out_dir: Path) -> BackboneConfig:
    """Build the tiny random pipeline once under OUT/tiny; point the config at it."""
    folder = build_once(out_dir / "tiny" / cfg.kind, TINY_BUILDERS[cfg.kind], "model_index.json")
    cfg = copy.copy(cfg)
    cfg.pretrained = str(folder)
    return cfg


def reward_spec(cfg: BackboneConfig, out_dir: Path) -> str:
    """The reward spec, with ``tiny-clip`` built once under OUT/tiny/clip and loaded as PickScore."""
    if cfg.reward != "tiny-clip":
        return cfg.reward
    clip = build_once(out_dir / "tiny" / "clip", save_tiny_clip, "config.json")
    return f"pickscore:{clip}"


@dataclass
class TextToImage:
    """Everything a run needs, built and checked."""

    cfg: BackboneConfig
    pipe: Pipeline
    prompts: PromptSet
    generator: StepGenerator
    reference: nn.Module
    ta: nn.Module
    reward: LatentReward
    latent_shape: tuple[int, int, int]
    device: torch.device
    networks: list[nn.Module]  # the distinct networks the roles call (sharded one by one under FSDP2)

    def sample_inputs(self, n: int, generator: torch.Generator | None = None):
        z = torch.randn(n, *self.latent_shape, generator=generator).to(self.device)
        return z, self.prompts.sample(n, generator, self.device)


def build(cfg: BackboneConfig, out_dir: Path) -> TextToImage:
    """Load, check and wire the models of a text-to-image run (no training step yet)."""
    if cfg.tiny:
        cfg = prepare_tiny(cfg, out_dir)
    device = resolve_device(cfg.device)
    pipe = load_pipeline(cfg, device)
    gen_net = pipe.net if cfg.shares_reference else load_generator_net(cfg, pipe.net, device)
    prompts = build_prompts(cfg, pipe, Path(cfg.cache_dir) if cfg.cache_dir else out_dir / "text_cache")
    check_compatible(cfg, pipe, gen_net, prompts.rows)
    shape = latent_shape(cfg, pipe)
    pipe.encoder = None  # the embeddings are cached: the text encoders are no longer needed

    schedule = schedule_from_scheduler(pipe.scheduler, cfg.backbone.family.name)
    pred = getattr(pipe.scheduler.config, "prediction_type", "epsilon") or "epsilon"
    # a full-copy TA is copied before any adapter joins the reference
    ta_copy = None if cfg.ta_lora_rank else copy.deepcopy(pipe.net).float().requires_grad_(True)
    nets = [n for n in (pipe.net, None if gen_net is pipe.net else gen_net, ta_copy) if n is not None]
    add_generator_adapter(cfg, gen_net)
    if cfg.ta_lora_rank:
        add_lora(pipe.net, cfg.ta_lora_rank, "ta", cfg.lora_targets)  # shares the frozen base
    if cfg.gradient_checkpointing:
        for net in nets:
            enable_checkpointing(net)  # block by block, safe when roles switch adapters on one network
    den = lambda net: make_denoiser(net, schedule, cfg.backbone.family.name, pred, cfg.autocast)  # noqa: E731
    base = den(pipe.net)
    ta = SharedDenoiser(base, "ta") if ta_copy is None else den(ta_copy)
    base_ref = SharedDenoiser(base, None)
    reference = GuidedDenoiser(base_ref, cfg.guidance, prompts.null_cond) if cfg.guidance != 1.0 else base_ref
    times = generator_times(schedule, cfg.generator_t, cfg.generator_steps, cfg.generator_times)
    gen_den = SharedDenoiser(base, "generator") if gen_net is pipe.net else den(gen_net)
    generator = StepGenerator(gen_den, times, checkpoint=cfg.gradient_checkpointing, renoise=cfg.generator_renoise)
    decoder = VaeDecoder(pipe.vae, cfg.decode_micro_batch, cfg.decode_checkpoint, cfg.decode_downscale)
    reward = LatentReward(load_reward(reward_spec(cfg, out_dir), device=device), decoder)
    return TextToImage(cfg, pipe, prompts, generator, reference, ta, reward, shape, device, nets)


def build_run_objective(run_cfg, t2i: TextToImage):
    """The configured objective; ReFL's regulariser regresses onto the generator as it starts
    (with a LoRA generator, its own network with the adapter off: no second copy). A generator
    started from a released LoRA is not its base: the copy keeps that LoRA (over a shared base,
    only the adapters are copied)."""
    initial = None
    if run_cfg.method.needs_initial_generator:
        initial = FrozenCopy(t2i.generator) if t2i.cfg.generator_lora else frozen_initial(t2i.generator)
    return build_objective(run_cfg.method, t2i.generator.schedule, t2i.reward, initial_generator=initial)


def run_text_to_image(run_cfg, out_dir: Path) -> dict:
    """``didr train`` entry point: build, check, train with the configured objective, export."""
    t2i = build(run_cfg.backbone, out_dir)
    objective = build_run_objective(run_cfg, t2i)
    alignment = Alignment(t2i.generator, t2i.reference, t2i.ta, objective, t2i.sample_inputs, t2i.networks)
    trainer = Trainer(alignment, run_cfg.train, out_dir, desc=f"{run_cfg.method.name} {t2i.cfg.kind}")
    logs = trainer.run()
    generator = trainer.unsharded_generator()  # whole on the main process (gathered under FSDP2), None elsewhere
    if generator is not None:
        export_generator(t2i, generator, out_dir / "export")
    return {k: float(v) for k, v in logs.items()}
