"""Loading a diffusers text-to-image pipeline for training: the ``backbone`` config section, the
reference's network, VAE, scheduler and text encoders, the generator's network, and the start-up
checks that refuse a mismatched backbone before any file is written or any step is taken.

What differs between backbone families (folder layout, text encoders, conventions) comes from
:mod:`didr.models.backbones`; weights are referenced by a local path or a hub id
(:mod:`didr.hub`).
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from didr.config import require
from didr.errors import ConfigError, ModelLoadError
from didr.hub import check_folder_ref, describe_ref, is_local, load_state_dict, load_strict, resolve_file, resolve_weight_file, split_file_ref
from didr.models.backbones import AUTOCAST_DTYPES, BACKBONES, UNET_PREDICTIONS, Backbone, backbone
from didr.models.export import FROZEN_MODES
from didr.models.generators import RENOISE
from didr.models.lora import DEFAULT_TARGETS, adapter_rank, add_lora, load_lora
from didr.models.text import BUILTIN, PromptSet, encode, load_cached, load_prompts, save_cached
from didr.runtime import DTYPES, keep_quiet


@dataclass
class BackboneConfig:
    """The ``backbone`` section: which diffusers models, prompts and reward, and how to fit them in memory."""

    kind: str = "sdxl"  # sdxl | sd | zimage | sd3 | flux | flux2 | qwenimage (didr.models.backbones)
    pretrained: str = ""  # reference pipeline: a diffusers folder or hub id (unet|transformer, vae, text encoders, scheduler)
    tiny: bool = False  # build a tiny random pipeline (and tiny CLIP reward) under OUT/tiny and load it from there
    generator: str | None = None  # generator network: diffusers folder/hub id (e.g. Z-Image-Turbo), None = the reference's
    generator_subfolder: str | None = None  # default: "unet" or "transformer" when `generator` is a pipeline folder
    generator_weights: str | None = None  # a state-dict file: a path or org/name:file (DMD2's tianweiy/DMD2:dmd2_sdxl_1step_unet_fp16.bin)
    generator_prediction_type: str | None = None  # UNet generators: epsilon | v_prediction | sample; None = its scheduler's (SDXL-Lightning's 1-step UNet predicts the sample)
    generator_t: float = 1.0  # first generator time in (0, 1]; DMD2's timestep 399 is t = (399 + 1) / 1000 = 0.4
    generator_steps: int = 1  # 1 = one-step; 4 = the paper's 4-step Z-Image (trained by DMD2's backward simulation)
    generator_renoise: str = "ddim"  # between steps: ddim (deterministic; ZImagePipeline's Euler) | fresh (new noise: DMD2, LCMScheduler)
    generator_times: list[float] = field(default_factory=list)  # explicit decreasing times (overrides t / steps)
    prompts: str = "builtin"  # .txt (one per line), .jsonl (prompt / caption / text field), or builtin: 50 prompts that ship with didr
    prompt_list: list[str] = field(default_factory=list)  # inline prompts, used instead of `prompts` when given
    negative_prompt: str = ""
    eval_prompts: str = "split:8"  # held-out prompts when train.eval_every > 0: split:N (the last N, kept out of training) or a prompt file
    eval_seeds: int = 2  # seeds per held-out prompt
    eval_rewards: list[str] = field(default_factory=list)  # rewards the run does not train on, measured on the held-out prompts
    cfg_scale: float | None = None  # reference CFG scale w of (M4); None = the backbone's default
    cfg_normalization: float = 0.0  # Z-Image: the guided velocity's norm at most this times the conditional one's (0 = off)
    distilled_guidance: float = 3.5  # the guidance input of guidance-distilled networks (FLUX.1-dev); ignored by others
    reward: str = "pickscore"  # a reward spec (didr.rewards.registry); "tiny-clip" = a tiny random PickScore-style CLIP
    resolution: int = 1024  # image side in pixels
    max_sequence_length: int = 512  # the text encoder's length (Z-Image, SD3, FLUX, Qwen-Image)
    generator_lora_rank: int = 0  # 0 = full fine-tuning
    generator_lora: str | None = None  # LoRA weights that start the generator: a path, org/name or org/name:file; rank from the file
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
    export_dtype: str = "float32"  # the exported network's weights: float32 | bfloat16 | float16 (half the disk)
    export_frozen: str = "copy"  # the export's VAE and text encoders: copy (self-contained) | link (to the base's files) | network (none: load into the base)

    def validate(self, path: str = "backbone") -> None:
        require(self.kind in BACKBONES, f"{path}.kind", f"must be one of {', '.join(BACKBONES)}, got {self.kind!r}")
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
        require(self.export_dtype in DTYPES, f"{path}.export_dtype", f"must be one of {', '.join(DTYPES)}, got {self.export_dtype!r}")
        require(self.export_frozen in FROZEN_MODES, f"{path}.export_frozen", f"must be one of {', '.join(FROZEN_MODES)}, got {self.export_frozen!r}")
        require(self.cfg_normalization >= 0, f"{path}.cfg_normalization", f"must be >= 0, got {self.cfg_normalization}")
        require(self.max_sequence_length >= 1, f"{path}.max_sequence_length", f"must be >= 1, got {self.max_sequence_length}")
        if self.backbone.distilled_guidance:
            require(not self.negative_prompt, f"{path}.negative_prompt", f"{self.kind} is guidance-distilled: it takes no negative prompt")
            require(self.cfg_scale in (None, 1.0), f"{path}.cfg_scale", f"{self.kind} is guidance-distilled: its guidance is "
                    f"backbone.distilled_guidance, not CFG (leave cfg_scale unset)")
        require(self.generator_renoise == "ddim" or not self.backbone.family.flow, f"{path}.generator_renoise",
                f"fresh noise between steps is for the UNet backbones: the {self.backbone.pipeline_class} does not hand its generator to its "
                "scheduler, so its images could not be reproduced from a seed; flow backbones step deterministically (ddim, Euler)")
        require(self.generator_prediction_type in (None, *UNET_PREDICTIONS) and (self.generator_prediction_type is None or not self.backbone.family.flow),
                f"{path}.generator_prediction_type", f"is for UNet generators: one of {', '.join(UNET_PREDICTIONS)}, got {self.generator_prediction_type!r}"
                + (f" (the {self.kind} networks predict the flow velocity)" if self.backbone.family.flow else ""))
        require(not (self.prompt_list and self.prompts != BUILTIN), f"{path}.prompt_list",
                f"and {path}.prompts={self.prompts!r} both name the prompts; give one")
        require(self.eval_seeds >= 1, f"{path}.eval_seeds", f"must be >= 1, got {self.eval_seeds}")
        if self.eval_prompts.startswith("split:"):
            count = self.eval_prompts.removeprefix("split:")
            require(count.isdigit() and int(count) >= 1, f"{path}.eval_prompts", f"split:N needs a count N >= 1, got {self.eval_prompts!r}")
        require(not self.cfg_normalization or self.kind == "zimage", f"{path}.cfg_normalization", "is Z-Image's option; other backbones do not take it")

    @property
    def backbone(self) -> Backbone:
        return backbone(self.kind)

    @property
    def shares_reference(self) -> bool:
        """Whether the generator is an adapter over the reference network itself (DI-style start, or a released LoRA)."""
        lora = self.generator_lora_rank > 0 or bool(self.generator_lora)
        return self.share_base and lora and not self.generator and not self.generator_weights

    @property
    def network(self) -> str:
        return self.backbone.network

    @property
    def guidance(self) -> float:
        return self.backbone.cfg_scale if self.cfg_scale is None else self.cfg_scale


# ---------------------------------------------------------------- loading

def load_component(cls: Any, source: str, subfolder: str | None, what: str, **kwargs) -> Any:
    """``cls.from_pretrained(source, subfolder=...)`` with errors that name what was expected."""
    where = f"{source}/{subfolder}" if subfolder else source
    if not source:
        raise ModelLoadError(f"{what}: no path or hub id given (expected a diffusers folder holding {subfolder or 'the model'})")
    if is_local(source) and not Path(where).expanduser().is_dir():
        raise ModelLoadError(f"{what}: {where} does not exist (expected a diffusers {subfolder or 'model'} folder)")
    keep_quiet()
    try:
        return cls.from_pretrained(source, subfolder=subfolder, **kwargs)
    except (OSError, ValueError, EnvironmentError) as err:
        first = (str(err).strip().splitlines() or [type(err).__name__])[0][:200]
        raise ModelLoadError(f"{what}: cannot load {cls.__name__} from {describe_ref(source)}{f' ({subfolder})' if subfolder else ''}: {first}") from err


class AnyScheduler:
    """Loads whichever diffusers scheduler class the folder's config names."""

    @classmethod
    def from_pretrained(cls, source, subfolder=None, **kwargs):
        import diffusers

        config = diffusers.DDPMScheduler.load_config(source, subfolder=subfolder)
        return getattr(diffusers, config["_class_name"]).from_config(config)


@dataclass
class Pipeline:
    """The frozen parts of the reference pipeline, and the text encoder."""

    net: nn.Module
    vae: nn.Module
    scheduler: Any
    encoder: Any
    encoder_id: str


def load_text_encoder(cfg: BackboneConfig, device: torch.device, dtype: torch.dtype):
    """The backbone's text encoder(s) and tokenizer(s) from the reference pipeline's folder:
    ``load(cls, subfolder)`` loads one component; ``load(None, **components)`` the stock pipeline
    itself, with the given components (the network, the VAE) left out."""

    def load(cls, sub=None, **kwargs):
        if cls is None:
            pipeline = cfg.backbone.pipeline_cls()
            return load_component(pipeline, cfg.pretrained, None, f"backbone.pretrained ({cfg.backbone.pipeline_class}'s text encoders)",
                                  dtype=dtype, **kwargs)
        cls = indexed_class(cfg.pretrained, sub) or cls
        return load_component(cls, cfg.pretrained, sub, f"backbone.pretrained ({sub})", **({} if "token" in sub else {"dtype": dtype}))

    return cfg.backbone.text_encoder(load, cfg, device, dtype)


def indexed_class(source: str, component: str):
    """The class the pipeline's model_index.json names for ``component``, as DiffusionPipeline loads
    it (a tokenizer by its own class, not AutoTokenizer, which would look for a config.json that a
    pipeline's tokenizer folder does not hold); None when the index does not name one."""
    import diffusers
    import transformers

    path = resolve_file(source, ["model_index.json"], "backbone.pretrained")
    library, name = (json.loads(path.read_text()).get(component) or [None, None])[:2]
    module = {"transformers": transformers, "diffusers": diffusers}.get(library)
    return getattr(module, name, None) if module is not None and name else None


def load_pipeline(cfg: BackboneConfig, device: torch.device) -> Pipeline:
    from diffusers import AutoModel

    dtype, src, bb = DTYPES[cfg.dtype], cfg.pretrained, cfg.backbone
    net = load_component(bb.network_cls(), src, bb.network, f"backbone.pretrained ({cfg.kind} {bb.network})", dtype=dtype)
    vae = load_component(AutoModel, src, "vae", "backbone.pretrained (vae)", dtype=dtype)
    scheduler = load_component(AnyScheduler, src, "scheduler", "backbone.pretrained (scheduler)")
    encoder = load_text_encoder(cfg, device, dtype)
    for m in (net, vae):
        m.requires_grad_(False).eval().to(device)
    return Pipeline(net, vae, scheduler, encoder, f"{cfg.kind}:{src}")


def load_generator_net(cfg: BackboneConfig, reference_net: nn.Module, device: torch.device) -> nn.Module:
    """The generator's network: a distilled folder / hub id, else a copy of the reference; then a state-dict file if given."""
    # a LoRA generator keeps its frozen base in the storage dtype; full fine-tuning trains fp32 weights
    dtype = DTYPES[cfg.dtype] if cfg.generator_lora_rank or cfg.generator_lora else torch.float32
    bb = cfg.backbone
    if cfg.generator:
        sub = cfg.generator_subfolder
        if sub is None and Path(cfg.generator, bb.network).is_dir():
            sub = bb.network
        net = load_component(bb.network_cls(), cfg.generator, sub, f"backbone.generator ({cfg.kind} {bb.network})", dtype=dtype)
    else:
        net = copy.deepcopy(reference_net).to(dtype)
    if cfg.generator_weights:
        path = resolve_weight_file(cfg.generator_weights, "backbone.generator_weights")
        state = {k: v.to(dtype) for k, v in load_state_dict(path, "backbone.generator_weights").items()}
        load_strict(net, state, "backbone.generator_weights", path)
    return net.requires_grad_(True).to(device).train()


def add_generator_adapter(cfg: BackboneConfig, net: nn.Module) -> None:
    """The generator's LoRA adapter: loaded from ``generator_lora`` (its rank from the file), or a
    fresh one of rank ``generator_lora_rank``; none for full fine-tuning."""
    if cfg.generator_lora:
        repo, file = split_file_ref(cfg.generator_lora)
        source = str(resolve_weight_file(cfg.generator_lora, "backbone.generator_lora")) if file else cfg.generator_lora
        load_lora(net, cfg.backbone, source, "generator")
        rank = adapter_rank(net, "generator")
        if cfg.generator_lora_rank and cfg.generator_lora_rank != rank:
            raise ConfigError(f"backbone.generator_lora_rank: {cfg.generator_lora_rank}, but {cfg.generator_lora} has rank {rank} (leave it 0)")
    elif cfg.generator_lora_rank:
        check_lora_targets(net, cfg.lora_targets)
        add_lora(net, cfg.generator_lora_rank, "generator", cfg.lora_targets)


# ---------------------------------------------------------------- start-up checks

def check_references(cfg: BackboneConfig) -> None:
    """Every weight reference of the section resolves (locally, from the hub cache, or from the hub
    when it is reachable), read before any file is written; a missing one is named."""
    if not cfg.tiny:
        check_folder_ref(cfg.pretrained, "backbone.pretrained", "model_index.json")
    if cfg.generator:
        marker = f"{cfg.generator_subfolder}/config.json" if cfg.generator_subfolder else None
        try:
            check_folder_ref(cfg.generator, "backbone.generator", marker or "model_index.json")
        except ModelLoadError:
            if marker is not None:
                raise
            check_folder_ref(cfg.generator, "backbone.generator", "config.json")  # a network folder rather than a pipeline
    if cfg.generator_weights:
        resolve_weight_file(cfg.generator_weights, "backbone.generator_weights")
    if cfg.generator_lora:
        repo, file = split_file_ref(cfg.generator_lora)
        if file or is_local(cfg.generator_lora):
            resolve_weight_file(cfg.generator_lora, "backbone.generator_lora", ["pytorch_lora_weights.safetensors"])
        else:
            check_folder_ref(cfg.generator_lora, "backbone.generator_lora", "pytorch_lora_weights.safetensors")


def check_lora_targets(net: nn.Module, targets: list[str]) -> None:
    """Every LoRA target names modules of the network (peft would refuse with a page of text)."""
    names = [n for n, _ in net.named_modules()]
    missing = [t for t in targets if not any(n == t or n.endswith("." + t) for n in names)]
    if missing:
        raise ConfigError(f"backbone.lora_targets: {', '.join(missing)} name no module of the {type(net).__name__} "
                          f"(its attention's linear layers are {', '.join(attention_linears(net)[:8])})")


def attention_linears(net: nn.Module) -> list[str]:
    """The names, as LoRA targets, of the linear layers inside the network's attention blocks (to_q, to_out.0, ...)."""
    found = set()
    for name, module in net.named_modules():
        if isinstance(module, nn.Linear) and "attn" in name:
            parts = name.split(".")
            found.add(".".join(parts[-2:]) if parts[-1].isdigit() else parts[-1])
    return sorted(found)


def check_compatible(cfg: BackboneConfig, pipe: Pipeline, gen_net: nn.Module, rows: list[dict]) -> None:
    """Backbone / config mismatches, caught before any training step: the latents' channels (as the
    network sees them: 2x2-packed for FLUX and Qwen-Image), and the family's own text conditioning
    (SDXL's text_time conditions, text-embedding widths)."""
    channels = latent_shape(cfg, pipe.vae)[0] * cfg.backbone.packed_channels
    for name, net in (("reference", pipe.net), ("generator", gen_net)):
        c = net.config
        if c.in_channels != channels:
            raise ConfigError(f"backbone: the {name} {cfg.network} takes {c.in_channels} input channels but the VAE's latents give {channels}")
        cfg.backbone.check(cfg, name, c, rows[0])


def latent_shape(cfg: BackboneConfig, vae) -> tuple[int, int, int]:
    """The generator's sample shape (C, h, w) in the backbone's latents, at ``cfg.resolution``."""
    multiple = cfg.backbone.latent_multiple(vae)
    if cfg.resolution % multiple:
        raise ConfigError(f"backbone.resolution: must be a multiple of {multiple} for this VAE, got {cfg.resolution}")
    return cfg.backbone.latent_shape(cfg, vae)


def split_prompts(cfg: BackboneConfig, held_out: bool) -> tuple[list[str], list[str]]:
    """(training prompts, held-out prompts): with ``held_out``, ``eval_prompts`` names the held-out ones,
    ``split:N`` the last N of the prompt set (which then trains on the others) or a prompt file."""
    prompts = list(cfg.prompt_list) or load_prompts(cfg.prompts or BUILTIN)
    if not held_out:
        return prompts, []
    if cfg.eval_prompts.startswith("split:"):
        n = int(cfg.eval_prompts.removeprefix("split:"))
        if n >= len(prompts):
            raise ConfigError(f"backbone.eval_prompts: split:{n} would hold out all {len(prompts)} prompts; keep some to train on")
        return prompts[:-n], prompts[-n:]
    return prompts, load_prompts(cfg.eval_prompts)


def build_prompts(cfg: BackboneConfig, pipe: Pipeline, cache_dir: Path, held_out: bool = False) -> tuple[PromptSet, PromptSet | None, Callable[[], None]]:
    """The run's prompts (and held-out prompts), encoded once, with the null prompt for CFG: from the
    cache under ``cache_dir`` when they are there, and a function that saves them there (called once
    the run passed its start-up checks, so that a refused run writes nothing)."""
    train, evaluate = split_prompts(cfg, held_out)
    texts = [train, [cfg.negative_prompt], *([evaluate] if evaluate else [])]
    cached = [load_cached(pipe.encoder_id, t, cache_dir) for t in texts]
    new = [i for i, rows in enumerate(cached) if rows is None]
    rows = [encode(pipe.encoder, t) if r is None else r for t, r in zip(texts, cached)]
    (null,) = rows[1]
    if cfg.backbone.zero_null_prompt and not cfg.negative_prompt:
        null = {k: torch.zeros_like(v) for k, v in null.items()}

    def save() -> None:
        for i in new:
            save_cached(pipe.encoder_id, texts[i], rows[i], cache_dir)

    shared = cfg.backbone.shared_cond(cfg)
    return PromptSet(train, rows[0], null, shared), (PromptSet(evaluate, rows[2], null, shared) if evaluate else None), save
