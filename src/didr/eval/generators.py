"""The generators ``didr eval`` compares, and their images.

A generator is named by ``SOURCE[?key=value&...]``:

- a didr run directory (its ``export/``), or an export directory itself: the pipeline it holds,
  called with the ``call`` its ``sampling.json`` recorded (the generator's own times, no guidance);
- any diffusers pipeline folder or hub id (a teacher at 50 steps, DMD2, a released one-step model),
  called with ``steps`` (``num_inference_steps``) and ``guidance`` (``guidance_scale``) as given.

Options: ``name`` (default: the folder's name), ``steps``, ``guidance``, ``true_cfg`` (Qwen-Image,
FLUX's true CFG), ``timesteps`` (``999,749,...``), ``negative`` (a negative prompt), and to run a
released generator that ships as weights for a base pipeline: ``weights`` (a state-dict file for the
pipeline's UNet / transformer, e.g. ``tianweiy/DMD2:dmd2_sdxl_1step_unet_fp16.bin``), ``lora`` (a LoRA
loaded with ``load_lora_weights`` and fused) and ``scheduler`` (a diffusers scheduler class built
from the pipeline's scheduler config, e.g. ``LCMScheduler``). Every image is
``pipe(prompt, generator=torch.Generator().manual_seed(seed), **call)`` for one prompt and seed, so an
image does not depend on the batch it was drawn in, and generators of the same latent shape start
from the same noise for the same seed.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
from torch import Tensor

from didr.errors import ConfigError, ModelLoadError
from didr.files import atomic_write_bytes
from didr.hub import HUB_ID, describe_ref, is_local, load_state_dict, load_strict, resolve_weight_file, split_file_ref
from didr.runtime import keep_quiet

#: options of a generator spec and the pipeline keyword each sets (name is didr's own)
OPTIONS = {"steps": "num_inference_steps", "guidance": "guidance_scale", "true_cfg": "true_cfg_scale", "timesteps": "timesteps",
           "negative": "negative_prompt", "name": None, "weights": None, "lora": None, "scheduler": None}
#: options that change the pipeline rather than its call
PIPELINE_OPTIONS = ("weights", "lora", "scheduler")


@dataclass(frozen=True)
class GeneratorSpec:
    name: str
    source: str  # the pipeline folder or hub id that is loaded
    call: dict[str, Any] = field(default_factory=dict)  # keyword arguments of every pipeline call but prompt and generator
    kind: str = "pipeline"  # run | export | pipeline
    changes: dict[str, str] = field(default_factory=dict)  # weights / lora / scheduler swapped into the pipeline

    def describe(self) -> dict:
        return {"source": self.source, "kind": self.kind, "call": self.call, **self.changes}


def parse_generator(spec: str, resolution: int | None = None) -> GeneratorSpec:
    """A generator from its spec (module docstring); ``resolution`` sets height and width unless an
    export recorded its own (then they must agree)."""
    source, _, query = str(spec).partition("?")
    options = _options(query, spec)
    path = Path(source).expanduser()
    if path.is_dir() and (path / "export" / "sampling.json").is_file():
        return _recorded(path / "export", "run", options.get("name") or path.name, options, resolution, spec)
    if path.is_dir() and (path / "sampling.json").is_file():
        return _recorded(path, "export", options.get("name") or path.parent.name, options, resolution, spec)
    if is_local(source):
        if not (path / "model_index.json").is_file():
            raise ModelLoadError(f"generator {spec!r}: {path} is neither a didr run, an export nor a diffusers pipeline folder (no model_index.json)")
    elif not HUB_ID.match(source):
        raise ModelLoadError(f"generator {spec!r}: {describe_ref(source)}")
    call = {OPTIONS[k]: _value(k, v) for k, v in options.items() if OPTIONS[k]}
    if resolution:
        call.update(height=resolution, width=resolution)
    changes = {k: options[k] for k in PIPELINE_OPTIONS if k in options}
    return GeneratorSpec(options.get("name") or path.name, source, call, "pipeline", changes)


def _recorded(export: Path, kind: str, name: str, options: dict, resolution: int | None, spec: str) -> GeneratorSpec:
    call = dict(json.loads((export / "sampling.json").read_text())["call"])
    if any(k for k in options if k not in ("name", "negative")):
        raise ConfigError(f"generator {spec!r}: a didr export samples as it was trained (its sampling.json); only name= applies")
    if resolution and call.get("height", resolution) != resolution:
        raise ConfigError(f"generator {spec!r}: trained at {call.get('height')} px, asked for {resolution}; leave --resolution out or match it")
    return GeneratorSpec(name, str(export), call, kind)


def _options(query: str, spec: str) -> dict[str, str]:
    options = {}
    for item in filter(None, query.split("&")):
        key, eq, value = item.partition("=")
        if not eq or key not in OPTIONS:
            raise ConfigError(f"generator {spec!r}: option {item!r} is not one of {', '.join(f'{k}=...' for k in OPTIONS)}")
        options[key] = value
    return options


def _value(key: str, value: str):
    try:
        if key == "steps":
            return int(value)
        if key in ("guidance", "true_cfg"):
            return float(value)
        if key == "timesteps":
            return [int(v) for v in value.split(",")]
    except ValueError:
        raise ConfigError(f"generator option {key}={value!r}: not a number") from None
    return value


def image_name(prompt_index: int, seed: int) -> str:
    """Sorted names run prompt-major, seeds ascending (the order ``didr score`` reads a folder in)."""
    return f"{prompt_index:05d}-seed{seed:05d}.png"


def load_pipeline(spec: GeneratorSpec, device: torch.device, dtype: torch.dtype):
    import diffusers

    keep_quiet()
    try:
        pipe = diffusers.DiffusionPipeline.from_pretrained(spec.source, dtype=dtype)
    except (OSError, ValueError, EnvironmentError) as err:
        first = (str(err).strip().splitlines() or [type(err).__name__])[0][:200]
        raise ModelLoadError(f"generator {spec.name}: cannot load a pipeline from {describe_ref(spec.source)}: {first}") from err
    pipe.set_progress_bar_config(disable=True)
    apply_changes(pipe, spec)
    return pipe.to(device)


def check_changes(spec: GeneratorSpec) -> None:
    """The scheduler class exists and the weight and LoRA references resolve (before any image is drawn)."""
    scheduler_class(spec)
    for key in ("weights", "lora"):
        ref = spec.changes.get(key)
        repo, file = split_file_ref(ref) if ref else (None, None)
        if ref and (file or is_local(ref)):
            resolve_weight_file(ref, f"generator {spec.name} {key}", ["pytorch_lora_weights.safetensors"] if key == "lora" else ())


def apply_changes(pipe, spec: GeneratorSpec) -> None:
    """Swap a released generator's weights, LoRA or scheduler into its base pipeline."""
    what = f"generator {spec.name}"
    network = pipe.unet if getattr(pipe, "unet", None) is not None else pipe.transformer
    if "weights" in spec.changes:
        path = resolve_weight_file(spec.changes["weights"], f"{what} weights")
        load_strict(network, load_state_dict(path, f"{what} weights"), f"{what} weights", path)
    if "lora" in spec.changes:
        repo, file = split_file_ref(spec.changes["lora"])
        path = resolve_weight_file(spec.changes["lora"], f"{what} lora") if file or is_local(repo) else repo
        pipe.load_lora_weights(str(path))
        pipe.fuse_lora()
    if "scheduler" in spec.changes:
        pipe.scheduler = scheduler_class(spec).from_config(pipe.scheduler.config)


def scheduler_class(spec: GeneratorSpec):
    import diffusers

    name = spec.changes.get("scheduler")
    if name is None:
        return None
    cls = getattr(diffusers, name, None)
    if cls is None or not name.endswith("Scheduler"):
        raise ConfigError(f"generator {spec.name}: scheduler={name!r} is not a diffusers scheduler class")
    return cls


def sample_images(spec: GeneratorSpec, prompts: Sequence[str], seeds: Sequence[int], folder: Path, *, device: torch.device,
                  dtype: torch.dtype = torch.float32, batch: int = 4, progress: Callable[[int], None] | None = None) -> list[Path]:
    """PNG images for every (prompt, seed) under ``folder``, in prompt-major order; images already
    there are kept (a rerun draws only the missing ones)."""
    folder.mkdir(parents=True, exist_ok=True)
    jobs = [(i, s) for i in range(len(prompts)) for s in seeds]
    todo = [(i, s) for i, s in jobs if not (folder / image_name(i, s)).is_file()]
    if todo:
        pipe = load_pipeline(spec, device, dtype)
        for start in range(0, len(todo), batch):
            chunk = todo[start:start + batch]
            images = draw(pipe, spec, [prompts[i] for i, _ in chunk], [s for _, s in chunk])
            for (i, s), image in zip(chunk, images):
                save_png(image, folder / image_name(i, s))
            if progress is not None:
                progress(len(chunk))
        del pipe
    return [folder / image_name(i, s) for i, s in jobs]


@torch.no_grad()
def draw(pipe, spec: GeneratorSpec, prompts: list[str], seeds: list[int]) -> Tensor:
    """Images (N, 3, H, W) in [0, 1]: one generator per image, seeded by its own seed."""
    generators = [torch.Generator().manual_seed(s) for s in seeds]
    out = pipe(prompt=list(prompts), generator=generators, output_type="pt", **spec.call).images
    if not torch.isfinite(out).all():
        raise ModelLoadError(f"generator {spec.name}: the pipeline returned NaN or inf images")
    return out.float().cpu()


def save_png(image: Tensor, path: Path) -> None:
    """An image in [0, 1] as an 8-bit PNG, written whole or not at all."""
    import io

    from PIL import Image

    array = (image.clamp(0, 1) * 255).round().byte().permute(1, 2, 0).numpy()
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    atomic_write_bytes(buffer.getvalue(), path)

