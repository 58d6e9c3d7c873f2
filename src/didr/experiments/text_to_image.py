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
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from didr.diffusion.denoiser import GuidedDenoiser
from didr.diffusion.schedules import NoiseSchedule
from didr.errors import ModelLoadError
from didr.eval.score import named_rewards
from didr.experiments.heldout import HeldOutEvaluation
from didr.hub import is_local
from didr.models.backbones import make_denoiser, schedule_from_scheduler
from didr.models.decode import LatentReward, VaeDecoder
from didr.models.export import export_generator
from didr.models.generators import StepGenerator, generator_times
from didr.models.lora import FrozenCopy, add_lora, frozen_initial
from didr.models.pipeline import (
    AnyScheduler,
    BackboneConfig,
    Pipeline,
    add_generator_adapter,
    build_prompts,
    check_compatible,
    check_lora_targets,
    check_references,
    latent_shape,
    load_component,
    load_generator_net,
    load_pipeline,
    split_prompts,
)
from didr.models.shared import SharedDenoiser, enable_checkpointing
from didr.models.text import PromptSet
from didr.objectives.config import build_objective
from didr.rewards.registry import check_reward_reference, load_reward
from didr.runtime import is_main_process, resolve_device
from didr.testing.tiny import TINY_BUILDERS, build_once, move_into_place, save_tiny_clip
from didr.train.loop import Alignment, Trainer

#: what each tiny part's folder holds once it is complete
TINY_DONE = {"clip": "config.json", **{kind: "model_index.json" for kind in TINY_BUILDERS}}


def tiny_part(name: str, out_dir: Path, staging: Path) -> Path:
    """A tiny random part (a pipeline kind, or ``clip``): the one a previous start left under OUT/tiny,
    else built under ``staging``, outside OUT, to be kept by :func:`keep_staged` once every check passed."""
    final = out_dir / "tiny" / name
    if (final / TINY_DONE[name]).is_file():
        return final
    return build_once(staging / name, save_tiny_clip if name == "clip" else TINY_BUILDERS[name], TINY_DONE[name])


def keep_staged(cfg: BackboneConfig, out_dir: Path, staging: Path) -> None:
    """Move the tiny parts built under ``staging`` into OUT/tiny and point the config at them."""
    for folder in sorted(staging.iterdir()) if staging.is_dir() else []:
        if not folder.name.startswith("."):
            move_into_place(folder, out_dir / "tiny" / folder.name, TINY_DONE[folder.name])
    cfg.pretrained = str(out_dir / "tiny" / cfg.kind)


def with_tiny(cfg: BackboneConfig, out_dir: Path, staging: Path) -> BackboneConfig:
    """The config pointed at the tiny random pipeline."""
    cfg = copy.copy(cfg)
    cfg.pretrained = str(tiny_part(cfg.kind, out_dir, staging))
    return cfg


def reward_spec(cfg: BackboneConfig, out_dir: Path, staging: Path) -> str:
    """The reward spec, with ``tiny-clip`` a tiny random CLIP loaded as PickScore."""
    return f"pickscore:{tiny_part('clip', out_dir, staging)}" if cfg.reward == "tiny-clip" else cfg.reward


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
    schedule: NoiseSchedule  # the reference's (M1): the noise levels the objective compares scores at
    generator_scheduler_config: dict  # the generator's own scheduler (its shift, its prediction type): the export's starts from it
    networks: list[nn.Module]  # the distinct networks the roles call (sharded one by one under FSDP2)
    held_out: PromptSet | None = None  # prompts kept out of training for its evaluations (backbone.eval_prompts)

    def sample_inputs(self, n: int, generator: torch.Generator | None = None):
        z = torch.randn(n, *self.latent_shape, generator=generator).to(self.device)
        return z, self.prompts.sample(n, generator, self.device)


def check_before_writing(cfg: BackboneConfig, held_out: bool = False) -> None:
    """What can be checked before any file is written: every weight reference, the prompt files and
    the reward specs."""
    check_references(cfg)
    split_prompts(cfg, held_out)
    for spec in [cfg.reward, *(cfg.eval_rewards if held_out else [])]:
        if spec != "tiny-clip":
            check_reward_reference(spec)


def generator_scheduler(cfg: BackboneConfig, pipe: Pipeline):
    """The generator's own scheduler: its pipeline's when ``backbone.generator`` names one (Z-Image-
    Turbo's shift 3 is not the base model's), else the reference's."""
    if cfg.generator and not cfg.generator_subfolder and (not is_local(cfg.generator) or Path(cfg.generator, "scheduler").is_dir()):
        try:
            return load_component(AnyScheduler, cfg.generator, "scheduler", "backbone.generator (scheduler)")
        except ModelLoadError:
            if is_local(cfg.generator):
                raise
    return pipe.scheduler


def build(cfg: BackboneConfig, out_dir: Path, held_out: bool = False) -> TextToImage:
    """Load, check and wire the models of a text-to-image run (no training step yet). Every check
    runs before anything is written under ``out_dir``: tiny random models are built outside it and
    moved in, and the text cache written, once all passed. ``held_out``: keep ``backbone.eval_prompts``
    out of training, for the run's evaluations."""
    check_before_writing(cfg, held_out)
    with tempfile.TemporaryDirectory(prefix="didr-tiny-") as staging:
        if cfg.tiny:
            cfg = with_tiny(cfg, out_dir, Path(staging))
        t2i, save_prompt_cache = wire(cfg, out_dir, reward_spec(cfg, out_dir, Path(staging)), held_out)
        if cfg.tiny:  # each process of a launch keeps its copy unless another's got there first
            keep_staged(t2i.cfg, out_dir, Path(staging))
    if is_main_process():
        save_prompt_cache()
    return t2i


def wire(cfg: BackboneConfig, out_dir: Path, reward: str, held_out: bool = False) -> tuple[TextToImage, Callable[[], None]]:
    """:func:`build`'s loading, checks and wiring; returns the run and the function that writes its text cache."""
    device, bb = resolve_device(cfg.device), cfg.backbone
    pipe = load_pipeline(cfg, device)
    if cfg.tiny:
        pipe.encoder_id = f"{cfg.kind}:tiny"  # the same random weights wherever they were built (staged, then OUT/tiny)
    gen_net = pipe.net if cfg.shares_reference else load_generator_net(cfg, pipe.net, device)
    prompts, held_out_prompts, save_prompt_cache = build_prompts(cfg, pipe, Path(cfg.cache_dir) if cfg.cache_dir else out_dir / "text_cache", held_out)
    check_compatible(cfg, pipe, gen_net, prompts.rows)
    shape = latent_shape(cfg, pipe.vae)
    pipe.encoder = None  # the embeddings are cached: the text encoders are no longer needed

    tokens = bb.tokens(shape)
    schedule = schedule_from_scheduler(pipe.scheduler, bb.family.name, tokens)
    gen_scheduler = generator_scheduler(cfg, pipe)
    gen_schedule = schedule_from_scheduler(gen_scheduler, bb.family.name, tokens, cfg.generator_steps)
    pred = getattr(pipe.scheduler.config, "prediction_type", "epsilon") or "epsilon"
    gen_pred = cfg.generator_prediction_type or getattr(gen_scheduler.config, "prediction_type", None) or pred
    gen_scheduler_config = {**dict(gen_scheduler.config), **({"prediction_type": gen_pred} if not bb.family.flow else {})}
    # a full-copy TA is copied before any adapter joins the reference
    ta_copy = None if cfg.ta_lora_rank else copy.deepcopy(pipe.net).float().requires_grad_(True)
    nets = [n for n in (pipe.net, None if gen_net is pipe.net else gen_net, ta_copy) if n is not None]
    add_generator_adapter(cfg, gen_net)
    if cfg.ta_lora_rank:
        check_lora_targets(pipe.net, cfg.lora_targets)
        add_lora(pipe.net, cfg.ta_lora_rank, "ta", cfg.lora_targets)  # shares the frozen base
    if cfg.gradient_checkpointing:
        for net in nets:
            enable_checkpointing(net)  # block by block, safe when roles switch adapters on one network

    def den(net, sched=schedule, prediction=pred):
        d = make_denoiser(net, sched, bb.family.name, prediction, cfg.autocast)
        d.guidance = cfg.distilled_guidance  # read by networks with a guidance input (FLUX.1-dev)
        return d

    base = den(pipe.net)
    ta = SharedDenoiser(base, "ta") if ta_copy is None else den(ta_copy)
    base_ref = SharedDenoiser(base, None)
    reference = GuidedDenoiser(base_ref, cfg.guidance, prompts.null_cond, bb.guidance_rescale(cfg)) if cfg.guidance != 1.0 else base_ref
    times = generator_times(gen_schedule, cfg.generator_t, cfg.generator_steps, cfg.generator_times)
    gen_den = den(pipe.net if gen_net is pipe.net else gen_net, gen_schedule, gen_pred)
    gen_den = SharedDenoiser(gen_den, "generator") if gen_net is pipe.net else gen_den
    generator = StepGenerator(gen_den, times, checkpoint=cfg.gradient_checkpointing, renoise=cfg.generator_renoise)
    decoder = VaeDecoder(pipe.vae, cfg.decode_micro_batch, cfg.decode_checkpoint, cfg.decode_downscale, decode=bb.decode)
    reward = LatentReward(load_reward(reward, device=device), decoder)
    t2i = TextToImage(cfg, pipe, prompts, generator, reference, ta, reward, shape, device, schedule, gen_scheduler_config, nets, held_out_prompts)
    return t2i, save_prompt_cache


def build_run_objective(run_cfg, t2i: TextToImage):
    """The configured objective; ReFL's regulariser regresses onto the generator as it starts
    (with a LoRA generator, its own network with the adapter off: no second copy). A generator
    started from a released LoRA is not its base: the copy keeps that LoRA (over a shared base,
    only the adapters are copied)."""
    initial = None
    if run_cfg.method.needs_initial_generator:
        initial = FrozenCopy(t2i.generator) if t2i.cfg.generator_lora else frozen_initial(t2i.generator)
    return build_objective(run_cfg.method, t2i.schedule, t2i.reward, initial_generator=initial)


def run_text_to_image(run_cfg, out_dir: Path, t2i: TextToImage | None = None) -> dict:
    """``didr train`` entry point: build and check (unless given the built run), train with the
    configured objective, export."""
    t2i = t2i or build(run_cfg.backbone, out_dir, held_out=run_cfg.train.eval_every > 0)
    objective = build_run_objective(run_cfg, t2i)
    alignment = Alignment(t2i.generator, t2i.reference, t2i.ta, objective, t2i.sample_inputs, t2i.networks)
    trainer = Trainer(alignment, run_cfg.train, out_dir, desc=f"{run_cfg.method.name} {t2i.cfg.kind}", evaluate=held_out_evaluation(t2i, out_dir))
    logs = trainer.run()
    generator = trainer.unsharded_generator()  # whole on the main process (gathered under FSDP2), None elsewhere
    if generator is not None:
        export_generator(t2i, generator, out_dir / "export")
    return {k: float(v) for k, v in logs.items()}


def held_out_evaluation(t2i: TextToImage, out_dir: Path) -> HeldOutEvaluation | None:
    """The run's evaluation on its held-out prompts (None when it holds none out)."""
    if t2i.held_out is None:
        return None
    held_out_rewards = named_rewards(t2i.cfg.eval_rewards, t2i.device, None) if t2i.cfg.eval_rewards else {}
    return HeldOutEvaluation(t2i.held_out, t2i.latent_shape, t2i.reward.decoder, t2i.reward.reward, held_out_rewards, t2i.cfg.eval_seeds,
                             out_dir, t2i.device)
