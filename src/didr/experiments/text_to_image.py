"""Text-to-image alignment on diffusers backbones: SDXL (DMD2's one-step UNet) and Z-Image.

    didr train configs/tiny-sdxl.yaml --out runs/tiny-sdxl      # tiny random models, CPU, seconds
    didr train configs/sdxl-dmd2-1step.yaml --out runs/sdxl     # real weights (fill in the paths)

Everything is built from the ``backbone`` section and checked before the first training step:
the reference pipeline (its denoiser, VAE, text encoders and scheduler), the generator (a
distilled network, or the reference, at fixed times), the TA (a LoRA on the frozen reference, or a
full copy), the prompt set with embeddings cached on disk, and the latent reward
reward(vae_decode(x_0), prompts). After training the generator is exported under ``OUT/export``
in diffusers' format (see :mod:`didr.models.export`).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from didr.config import require
from didr.errors import ConfigError, ModelLoadError
from didr.models.denoiser import GuidedDenoiser
from didr.models.diffusers_backbones import (AUTOCAST_DTYPES, LatentReward, SharedDenoiser, VaeDecoder, enable_checkpointing, make_denoiser,
                                             schedule_from_scheduler)
from didr.models.generators import RENOISE, StepGenerator, generator_times
from didr.models.lora import DEFAULT_TARGETS, FrozenCopy, adapter_rank, add_lora, frozen_initial, load_lora
from didr.models.text import ClipTextEncoder, PromptSet, QwenTextEncoder, encode_cached, load_prompts, sdxl_time_ids

KINDS = ("sdxl", "sd", "zimage")
#: the network folder and the CFG scale (M4) of the reference score, per backbone. SDXL: DMD2's
#: real-score guidance 8; Z-Image: its pipeline's default 4 plus one, since ZImagePipeline
#: computes pos + g (pos - neg), which is (M4) with w = 1 + g.
BACKBONES = {
    "sdxl": {"network": "unet", "cfg_scale": 8.0},
    "sd": {"network": "unet", "cfg_scale": 7.5},
    "zimage": {"network": "transformer", "cfg_scale": 5.0},
}
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass
class BackboneConfig:
    """The ``backbone`` section: which diffusers models, prompts and reward, and how to fit them in memory."""

    kind: str = "sdxl"  # sdxl | sd | zimage
    pretrained: str = ""  # reference pipeline: a diffusers folder or hub id (unet|transformer, vae, text encoders, scheduler)
    tiny: bool = False  # build a tiny random pipeline (and tiny CLIP reward) under OUT/tiny and load it from there
    generator: str | None = None  # generator network: diffusers folder/hub id (e.g. Z-Image-Turbo), None = the reference's
    generator_subfolder: str | None = None  # default: "unet" or "transformer" when `generator` is a pipeline folder
    generator_weights: str | None = None  # a state-dict file loaded into the generator (DMD2's dmd2_sdxl_1step_unet_fp16.bin)
    generator_t: float = 1.0  # first generator time in (0, 1]; DMD2's timestep 399 is t = (399 + 1) / 1000 = 0.4
    generator_steps: int = 1  # 1 = one-step; 4 = the paper's 4-step Z-Image (trained by DMD2's backward simulation)
    generator_renoise: str = "ddim"  # between steps: ddim (deterministic; ZImagePipeline's Euler) | fresh (new noise: DMD2, LCMScheduler)
    generator_times: list[float] = field(default_factory=list)  # explicit decreasing times (overrides t / steps)
    prompts: str = ""  # .txt (one per line) or .jsonl (prompt / caption / text field)
    prompt_list: list[str] = field(default_factory=list)  # inline prompts, used when `prompts` is empty
    negative_prompt: str = ""
    cfg_scale: float | None = None  # reference CFG scale w of (M4); None = the backbone's default
    reward: str = "pickscore"  # a reward spec (didr.rewards.registry); "tiny-clip" = a tiny random PickScore-style CLIP
    resolution: int = 1024  # image side in pixels
    max_sequence_length: int = 512  # Z-Image's text length
    generator_lora_rank: int = 0  # 0 = full fine-tuning
    generator_lora: str | None = None  # LoRA weights that start the generator (DMD2's released SDXL LoRA); rank from the file
    share_base: bool = True  # a LoRA generator over the reference itself holds no copy: one frozen base, an adapter per role
    ta_lora_rank: int = 0  # 0 = the TA is a full copy of the reference; > 0 = a LoRA on the shared frozen reference
    lora_targets: list[str] = field(default_factory=lambda: list(DEFAULT_TARGETS))
    dtype: str = "float32"  # storage of the frozen weights (reference, VAE, text encoders): float32 | bfloat16 | float16
    autocast: str = "none"  # none | bf16 | fp16, around every network call
    gradient_checkpointing: bool = False  # in the backbones (and between generator steps)
    decode_micro_batch: int = 0  # VAE decode this many latents at a time, 0 = all
    decode_checkpoint: bool = False  # recompute the VAE decoder in the backward pass
    decode_downscale: float = 1.0  # decode latents shrunk by this factor (bounds the reward's memory)
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    cache_dir: str | None = None  # text-embedding cache, default OUT/text_cache
    export_lora: bool = True  # also save the generator's LoRA weights (when it has them)

    def validate(self, path: str = "backbone") -> None:
        require(self.kind in KINDS, f"{path}.kind", f"must be one of {', '.join(KINDS)}, got {self.kind!r}")
        require(0 < self.generator_t <= 1, f"{path}.generator_t", f"must be in (0, 1], got {self.generator_t}")
        require(self.generator_steps >= 1, f"{path}.generator_steps", f"must be >= 1, got {self.generator_steps}")
        require(self.generator_renoise in RENOISE, f"{path}.generator_renoise", f"must be one of {', '.join(RENOISE)}, got {self.generator_renoise!r}")
        times = self.generator_times
        require(all(0 < t <= 1 for t in times) and all(a > b for a, b in zip(times, times[1:])), f"{path}.generator_times",
                f"must be decreasing and in (0, 1], got {times}")
        require(self.resolution >= 8, f"{path}.resolution", f"must be >= 8, got {self.resolution}")
        for name in ("generator_lora_rank", "ta_lora_rank", "decode_micro_batch"):
            require(getattr(self, name) >= 0, f"{path}.{name}", f"must be >= 0, got {getattr(self, name)}")
        require(self.dtype in DTYPES, f"{path}.dtype", f"must be one of {', '.join(DTYPES)}, got {self.dtype!r}")
        require(self.autocast in AUTOCAST_DTYPES, f"{path}.autocast", f"must be one of {', '.join(AUTOCAST_DTYPES)}, got {self.autocast!r}")
        require(self.decode_downscale >= 1, f"{path}.decode_downscale", f"must be >= 1, got {self.decode_downscale}")
        require(self.cfg_scale is None or self.cfg_scale >= 0, f"{path}.cfg_scale", f"must be >= 0, got {self.cfg_scale}")

    @property
    def shares_reference(self) -> bool:
        """Whether the generator is an adapter over the reference network itself (DI-style start, or a released LoRA)."""
        lora = self.generator_lora_rank > 0 or bool(self.generator_lora)
        return self.share_base and lora and not self.generator and not self.generator_weights

    @property
    def network(self) -> str:
        return BACKBONES[self.kind]["network"]

    @property
    def guidance(self) -> float:
        return BACKBONES[self.kind]["cfg_scale"] if self.cfg_scale is None else self.cfg_scale


# ---------------------------------------------------------------- loading

def load_component(cls: Any, source: str, subfolder: str | None, what: str, **kwargs) -> Any:
    """``cls.from_pretrained(source, subfolder=...)`` with errors that name what was expected."""
    from didr.rewards.loading import is_local

    where = f"{source}/{subfolder}" if subfolder else source
    if not source:
        raise ModelLoadError(f"{what}: no path or hub id given (expected a diffusers folder holding {subfolder or 'the model'})")
    if is_local(source) and not Path(where).expanduser().is_dir():
        raise ModelLoadError(f"{what}: {where} does not exist (expected a diffusers {subfolder or 'model'} folder)")
    try:
        return cls.from_pretrained(source, subfolder=subfolder, **kwargs)
    except (OSError, ValueError, EnvironmentError) as err:
        first = (str(err).strip().splitlines() or [type(err).__name__])[0][:200]
        raise ModelLoadError(f"{what}: cannot load {cls.__name__} from {where!r} ({first})") from err


class AnyScheduler:
    """Loads whichever diffusers scheduler class the folder's config names."""

    @classmethod
    def from_pretrained(cls, source, subfolder=None, **kwargs):
        import diffusers

        config = diffusers.DDPMScheduler.load_config(source, subfolder=subfolder)
        return getattr(diffusers, config["_class_name"]).from_config(config)


def network_class(kind: str):
    from diffusers import UNet2DConditionModel, ZImageTransformer2DModel

    return ZImageTransformer2DModel if kind == "zimage" else UNet2DConditionModel


@dataclass
class Pipeline:
    """The frozen parts of the reference pipeline, and the text encoder."""

    net: nn.Module
    vae: nn.Module
    scheduler: Any
    encoder: Any
    encoder_id: str


def load_pipeline(cfg: BackboneConfig, device: torch.device) -> Pipeline:
    from diffusers import AutoencoderKL

    dtype, src = DTYPES[cfg.dtype], cfg.pretrained
    net = load_component(network_class(cfg.kind), src, cfg.network, f"backbone.pretrained ({cfg.kind} {cfg.network})", torch_dtype=dtype)
    vae = load_component(AutoencoderKL, src, "vae", "backbone.pretrained (vae)", torch_dtype=dtype)
    scheduler = load_component(AnyScheduler, src, "scheduler", "backbone.pretrained (scheduler)")
    encoder = load_text_encoder(cfg, device, dtype)
    for m in (net, vae):
        m.requires_grad_(False).eval().to(device)
    return Pipeline(net, vae, scheduler, encoder, f"{cfg.kind}:{src}")


def load_text_encoder(cfg: BackboneConfig, device: torch.device, dtype: torch.dtype):
    from transformers import AutoModel, AutoTokenizer, CLIPTextModel, CLIPTextModelWithProjection

    def load(cls, sub):
        return load_component(cls, cfg.pretrained, sub, f"backbone.pretrained ({sub})", **({} if "token" in sub else {"dtype": dtype}))

    if cfg.kind == "zimage":
        return QwenTextEncoder(load(AutoTokenizer, "tokenizer"), load(AutoModel, "text_encoder").eval().to(device), cfg.max_sequence_length)
    if cfg.kind == "sd":
        return ClipTextEncoder([load(AutoTokenizer, "tokenizer")], [load(CLIPTextModel, "text_encoder").eval().to(device)], penultimate=False)
    toks = [load(AutoTokenizer, "tokenizer"), load(AutoTokenizer, "tokenizer_2")]
    encs = [load(CLIPTextModel, "text_encoder").eval().to(device), load(CLIPTextModelWithProjection, "text_encoder_2").eval().to(device)]
    return ClipTextEncoder(toks, encs)


def load_generator_net(cfg: BackboneConfig, reference_net: nn.Module, device: torch.device) -> nn.Module:
    """The generator's network: a distilled folder / hub id, else a copy of the reference; then a state-dict file if given."""
    from didr.rewards.loading import load_state_dict, load_strict

    # a LoRA generator keeps its frozen base in the storage dtype; full fine-tuning trains fp32 weights
    dtype = DTYPES[cfg.dtype] if cfg.generator_lora_rank or cfg.generator_lora else torch.float32
    if cfg.generator:
        sub = cfg.generator_subfolder
        if sub is None and Path(cfg.generator, cfg.network).is_dir():
            sub = cfg.network
        net = load_component(network_class(cfg.kind), cfg.generator, sub, f"backbone.generator ({cfg.kind} {cfg.network})", torch_dtype=dtype)
    else:
        net = copy.deepcopy(reference_net).to(dtype)
    if cfg.generator_weights:
        path = Path(cfg.generator_weights).expanduser()
        if not path.is_file():
            raise ModelLoadError(f"backbone.generator_weights: {path} does not exist (expected a state-dict file, e.g. dmd2_sdxl_1step_unet_fp16.bin)")
        state = {k: v.to(dtype) for k, v in load_state_dict(path, "backbone.generator_weights").items()}
        load_strict(net, state, "backbone.generator_weights", path)
    return net.requires_grad_(True).to(device).train()


def add_generator_adapter(cfg: BackboneConfig, net: nn.Module) -> None:
    """The generator's LoRA adapter: loaded from ``generator_lora`` (its rank from the file), or a
    fresh one of rank ``generator_lora_rank``; none for full fine-tuning."""
    if cfg.generator_lora:
        load_lora(net, cfg.kind, cfg.generator_lora, "generator")
        rank = adapter_rank(net, "generator")
        if cfg.generator_lora_rank and cfg.generator_lora_rank != rank:
            raise ConfigError(f"backbone.generator_lora_rank: {cfg.generator_lora_rank}, but {cfg.generator_lora} has rank {rank} (leave it 0)")
    elif cfg.generator_lora_rank:
        add_lora(net, cfg.generator_lora_rank, "generator", cfg.lora_targets)


# ---------------------------------------------------------------- start-up checks

def check_compatible(cfg: BackboneConfig, pipe: Pipeline, gen_net: nn.Module, rows: list[dict]) -> None:
    """Backbone / config mismatches, caught before any training step: latent channels, SDXL's
    text_time conditions, text-embedding widths."""
    ref_cfg, gen_cfg = pipe.net.config, gen_net.config
    latent = pipe.vae.config.latent_channels
    for name, c in (("reference", ref_cfg), ("generator", gen_cfg)):
        if c.in_channels != latent:
            raise ConfigError(f"backbone: the {name} {cfg.network} takes {c.in_channels} latent channels but the VAE makes {latent}")
    if cfg.kind == "zimage":
        width = rows[0]["cap_feats"].shape[-1]
        for name, c in (("reference", ref_cfg), ("generator", gen_cfg)):
            if c.cap_feat_dim != width:
                raise ConfigError(f"backbone: the {name} transformer expects caption features of width {c.cap_feat_dim}, the text encoder gives {width}")
        return
    width = rows[0]["encoder_hidden_states"].shape[-1]
    for name, c in (("reference", ref_cfg), ("generator", gen_cfg)):
        has_tt = c.addition_embed_type == "text_time"
        if cfg.kind == "sdxl" and not has_tt:
            raise ConfigError(f"backbone.kind: sdxl needs a UNet with text_time added conditions; the {name} UNet has addition_embed_type={c.addition_embed_type!r} (use kind: sd)")
        if cfg.kind == "sd" and has_tt:
            raise ConfigError(f"backbone.kind: the {name} UNet expects SDXL's text_time conditions; use kind: sdxl")
        if c.cross_attention_dim != width:
            raise ConfigError(f"backbone: the {name} UNet's cross_attention_dim is {c.cross_attention_dim}, the text encoders give {width}")
        if has_tt:
            want = 6 * c.addition_time_embed_dim + rows[0]["text_embeds"].shape[-1]
            if c.projection_class_embeddings_input_dim != want:
                raise ConfigError(f"backbone: the {name} UNet's text_time projection takes {c.projection_class_embeddings_input_dim} inputs, "
                                  f"the text encoders and time_ids give {want}")


# ---------------------------------------------------------------- building

def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def prepare_tiny(cfg: BackboneConfig, out_dir: Path) -> BackboneConfig:
    """Build the tiny random pipeline once under OUT/tiny; point the config at it."""
    from didr.models.tiny import TINY_BUILDERS, build_once

    folder = build_once(out_dir / "tiny" / cfg.kind, TINY_BUILDERS[cfg.kind], "model_index.json")
    cfg = copy.copy(cfg)
    cfg.pretrained = str(folder)
    return cfg


def reward_spec(cfg: BackboneConfig, out_dir: Path) -> str:
    """The reward spec, with ``tiny-clip`` built once under OUT/tiny/clip and loaded as PickScore."""
    from didr.models.tiny import build_once, save_tiny_clip

    if cfg.reward != "tiny-clip":
        return cfg.reward
    clip = build_once(out_dir / "tiny" / "clip", save_tiny_clip, "config.json")
    return f"pickscore:{clip}"


def build_prompts(cfg: BackboneConfig, pipe: Pipeline, cache_dir: Path) -> PromptSet:
    prompts = load_prompts(cfg.prompts) if cfg.prompts else list(cfg.prompt_list)
    if not prompts:
        raise ConfigError("backbone.prompts: give a prompt file (.txt or .jsonl) or backbone.prompt_list")
    rows = encode_cached(pipe.encoder, pipe.encoder_id, prompts, cache_dir)
    null = encode_cached(pipe.encoder, pipe.encoder_id, [cfg.negative_prompt], cache_dir)[0]
    if cfg.kind == "sdxl" and not cfg.negative_prompt:
        # StableDiffusionXLPipeline's force_zeros_for_empty_prompt, set in every released SDXL
        null = {k: torch.zeros_like(v) for k, v in null.items()}
    shared = {"time_ids": sdxl_time_ids(cfg.resolution, cfg.resolution)} if cfg.kind == "sdxl" else {}
    return PromptSet(prompts, rows, null, shared)


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

    def sample_inputs(self, n: int, generator: torch.Generator | None = None):
        z = torch.randn(n, *self.latent_shape, generator=generator).to(self.device)
        return z, self.prompts.sample(n, generator, self.device)


def latent_shape(cfg: BackboneConfig, pipe: Pipeline) -> tuple[int, int, int]:
    factor = 2 ** (len(pipe.vae.config.block_out_channels) - 1)
    multiple = factor * (2 if cfg.kind == "zimage" else 1)  # Z-Image patchifies 2x2 latents
    if cfg.resolution % multiple:
        raise ConfigError(f"backbone.resolution: must be a multiple of {multiple} for this VAE, got {cfg.resolution}")
    side = cfg.resolution // factor
    return (pipe.vae.config.latent_channels, side, side)


def check_sharing_under_fsdp(cfg: BackboneConfig) -> None:
    """FSDP shards the networks of the modules it wraps; a role over a shared frozen base calls a
    network that FSDP cannot see (its blocks are not the wrapped module's), so under FSDP each
    trained role needs a network of its own."""
    from didr.train.distributed import requested_sharding

    if requested_sharding() != "FSDP":
        return
    if cfg.shares_reference:
        raise ConfigError("backbone.share_base: under FSDP the generator needs its own network, not an adapter over the shared "
                          "reference; set backbone.share_base=false")
    if cfg.ta_lora_rank:
        raise ConfigError("backbone.ta_lora_rank: under FSDP the TA needs its own network, not an adapter over the shared reference; "
                          "set backbone.ta_lora_rank=0")


def build(cfg: BackboneConfig, out_dir: Path) -> TextToImage:
    """Load, check and wire the models of a text-to-image run (no training step yet)."""
    from didr.rewards.registry import load_reward

    if cfg.tiny:
        cfg = prepare_tiny(cfg, out_dir)
    check_sharing_under_fsdp(cfg)
    device = resolve_device(cfg.device)
    pipe = load_pipeline(cfg, device)
    gen_net = pipe.net if cfg.shares_reference else load_generator_net(cfg, pipe.net, device)
    prompts = build_prompts(cfg, pipe, Path(cfg.cache_dir) if cfg.cache_dir else out_dir / "text_cache")
    check_compatible(cfg, pipe, gen_net, prompts.rows)
    shape = latent_shape(cfg, pipe)
    pipe.encoder = None  # the embeddings are cached: the text encoders are no longer needed

    schedule = schedule_from_scheduler(pipe.scheduler, "unet" if cfg.network == "unet" else cfg.kind)
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
    den = lambda net: make_denoiser(net, schedule, "unet" if cfg.network == "unet" else cfg.kind, pred, cfg.autocast)  # noqa: E731
    base = den(pipe.net)
    ta = SharedDenoiser(base, "ta") if ta_copy is None else den(ta_copy)
    base_ref = SharedDenoiser(base, None)
    reference = GuidedDenoiser(base_ref, cfg.guidance, prompts.null_cond) if cfg.guidance != 1.0 else base_ref
    times = generator_times(schedule, cfg.generator_t, cfg.generator_steps, cfg.generator_times)
    gen_den = SharedDenoiser(base, "generator") if gen_net is pipe.net else den(gen_net)
    generator = StepGenerator(gen_den, times, checkpoint=cfg.gradient_checkpointing, renoise=cfg.generator_renoise)
    decoder = VaeDecoder(pipe.vae, cfg.decode_micro_batch, cfg.decode_checkpoint, cfg.decode_downscale)
    reward = LatentReward(load_reward(reward_spec(cfg, out_dir), device=device), decoder)
    return TextToImage(cfg, pipe, prompts, generator, reference, ta, reward, shape, device)


def build_run_objective(run_cfg, t2i: TextToImage):
    """The configured objective; ReFL's regulariser regresses onto the generator as it starts
    (with a LoRA generator, its own network with the adapter off: no second copy). A generator
    started from a released LoRA is not its base: the copy keeps that LoRA (over a shared base,
    only the adapters are copied)."""
    from didr.objectives.config import build_objective

    initial = None
    if run_cfg.method.needs_initial_generator:
        initial = FrozenCopy(t2i.generator) if t2i.cfg.generator_lora else frozen_initial(t2i.generator)
    return build_objective(run_cfg.method, t2i.generator.schedule, t2i.reward, initial_generator=initial)


def run_text_to_image(run_cfg, out_dir: Path) -> dict:
    """``didr train`` entry point: build, check, train with the configured objective, export."""
    from didr.models.export import export_generator
    from didr.train.distributed import is_main_process
    from didr.train.loop import Alignment, Trainer

    t2i = build(run_cfg.backbone, out_dir)
    objective = build_run_objective(run_cfg, t2i)
    alignment = Alignment(t2i.generator, t2i.reference, t2i.ta, objective, t2i.sample_inputs)
    trainer = Trainer(alignment, run_cfg.train, out_dir, desc=f"{run_cfg.method.name} {t2i.cfg.kind}")
    logs = trainer.run()
    if is_main_process():  # every process holds the same generator; one writes it
        export_generator(t2i, trainer.sampling_generator, out_dir / "export")
    return {k: float(v) for k, v in logs.items()}
