"""Export a trained generator as a diffusers pipeline folder that stock tools load and run.

``OUT/export/`` is a complete pipeline of the base's class (``model_index.json``):

- ``unet/`` or ``transformer/``: the generator's network, its LoRA folded in, in
  ``backbone.export_dtype`` (float32, the default, is what ``didr sample`` reproduces exactly;
  bfloat16 / float16 halve the size), written shard by shard from the live network, one merged tensor at a time (a real-size generator is never
  copied whole; over a shared base only the generator's adapter is folded in);
- ``scheduler/``: a scheduler of the base's kind set up for the generator's own sampling: LCM
  (fresh noise between steps, DMD2's way) or Euler on plain sigmas (deterministic DDIM) for the
  UNets, Euler for flow models, with the time shift off so that the generator's times are used as
  given, and the generator's own prediction type;
- the frozen parts (VAE, text encoders, tokenizers), as ``backbone.export_frozen`` says: ``copy``
  (a self-contained folder: the files ``from_pretrained`` reads, without the base repo's fp16 / ONNX /
  Flax variants, at their full size on disk), ``link`` (symbolic links to the base's
  folders or to its hub-cache snapshot: no extra disk, valid while the base stays where it is), or
  ``network`` (the network and scheduler alone, a few GB lighter: load them into the base pipeline
  as the model card shows);
- ``sampling.json``: the generator's times and re-noising, and under ``call`` the exact keyword
  arguments with which ``DiffusionPipeline.from_pretrained(OUT/export)(prompt, generator=g, **call)``
  reproduces ``didr sample``; ``README.md``, a short model card with that call;
- ``lora/`` (diffusers' format, ``pipe.load_lora_weights``) and, for the UNet family,
  ``lora_kohya.safetensors`` (the key layout A1111 and ComfyUI load), when the generator trained a LoRA.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import torch
from torch import nn

from didr.files import atomic_write_text
from didr.hub import local_folder
from didr.models.lora import adapter_rank, lora_state_dict, merged_tensors
from didr.runtime import DTYPES

WEIGHTS = "diffusion_pytorch_model"
SHARD_BYTES = 2**30
FROZEN_MODES = ("copy", "link", "network")


def generator_adapter(denoiser: nn.Module) -> str | None:
    """The adapter that is the generator: a role's own (shared network), else "generator" if present."""
    role = getattr(denoiser, "adapter", None)
    if role is not None:
        return role
    return "generator" if adapter_rank(denoiser.net, "generator") else None


def save_merged_network(net: nn.Module, adapter: str | None, folder: Path, shard_bytes: int = SHARD_BYTES,
                        dtype: torch.dtype = torch.float32) -> Path:
    """``net`` with ``adapter`` folded in (and no other adapter), as a diffusers model folder with
    floating tensors in ``dtype``: ``config.json`` and safetensors shards (with diffusers' index when there are several)."""
    from safetensors.torch import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    net.save_config(folder)
    shards, current, size, total = [], {}, 0, 0

    def flush():
        nonlocal current, size
        if current:
            name = f"{WEIGHTS}-{len(shards) + 1:05d}.tmp.safetensors"
            save_file({k: v.contiguous() for k, v in current.items()}, str(folder / name), metadata={"format": "pt"})
            shards.append((name, list(current)))
            current, size = {}, 0

    for key, tensor in merged_tensors(net, adapter):
        tensor = tensor.to(dtype) if tensor.is_floating_point() else tensor
        nbytes = tensor.numel() * tensor.element_size()
        if current and size + nbytes > shard_bytes:
            flush()
        current[key], size, total = tensor, size + nbytes, total + nbytes
    flush()
    if len(shards) == 1:
        (folder / shards[0][0]).rename(folder / f"{WEIGHTS}.safetensors")
        return folder
    weight_map = {}
    for i, (tmp, keys) in enumerate(shards):
        final = f"{WEIGHTS}-{i + 1:05d}-of-{len(shards):05d}.safetensors"
        (folder / tmp).rename(folder / final)
        weight_map.update({k: final for k in keys})
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (folder / f"{WEIGHTS}.safetensors.index.json").write_text(json.dumps(index, indent=2))
    return folder


def sampling_info(t2i, generator: nn.Module, frozen: str) -> dict:
    """How to sample the generator: its times and re-noising, and the stock pipeline's call."""
    cfg = t2i.cfg
    bb = cfg.backbone
    times = [float(t) for t in generator.times]
    call = {**bb.pipeline_times(times, generator.schedule), **bb.call(cfg)}
    return {"kind": cfg.kind, "network": bb.network, "pipeline": bb.pipeline_class, "times": times, "renoise": cfg.generator_renoise,
            "latent_shape": list(t2i.latent_shape), "resolution": cfg.resolution, "max_sequence_length": cfg.max_sequence_length,
            "base": cfg.pretrained, "frozen": frozen, "scheduler": type(bb.sampling_scheduler(t2i.generator_scheduler_config, cfg.generator_renoise)).__name__,
            "prediction_type": t2i.generator_scheduler_config.get("prediction_type"), "call": call}


def frozen_components(model_index: dict, network: str) -> list[str]:
    """The base pipeline's components other than the network and the scheduler."""
    return [k for k, v in model_index.items() if not k.startswith("_") and isinstance(v, list) and v[0] is not None and k not in (network, "scheduler")]


#: the files of a component folder that from_pretrained reads (configs, tokenizer files, weights)
LOADED_FILES = ("*.json", "*.txt", "*.model", "*.tiktoken", "*.jinja", "*.safetensors")
#: weight variants a base repo may also hold, which the default load does not read
VARIANTS = ("fp16", "bf16", "fp32", "non_ema", "ema")


def is_loaded_file(name: str) -> bool:
    """Whether ``from_pretrained`` (no variant) reads this file of a component folder."""
    parts = name.split(".")
    loaded = any(Path(name).match(p) for p in LOADED_FILES)
    return loaded and not any(part.split("-")[0] in VARIANTS for part in parts[1:-1])


def base_folder(ref: str, components: list[str]) -> Path:
    """The base pipeline's folder with the frozen components' loaded files (fetched into the hub cache when ``ref`` is a hub id)."""
    patterns = ["model_index.json", *(f"{c}/{p}" for c in components for p in LOADED_FILES)]
    return local_folder(ref, "backbone.pretrained", patterns, ignore=[f"*.{v}.*" for v in VARIANTS] + [f"*.{v}-*" for v in VARIANTS])


def place_frozen(base: Path, out: Path, components: list[str], mode: str) -> int:
    """Copy or link the frozen components' folders from the base; returns the bytes written."""
    written = 0
    for name in components:
        source, target = (base / name).resolve(), out / name
        if target.is_symlink() or target.is_file():
            target.unlink()
        elif target.exists():
            shutil.rmtree(target)
        if mode == "link":
            os.symlink(source, target, target_is_directory=True)
            continue
        shutil.copytree(source, target, symlinks=False,
                        ignore=lambda folder, names: [n for n in names if not (Path(folder, n).is_dir() or is_loaded_file(n))])
        written += sum(f.stat().st_size for f in target.rglob("*") if f.is_file())
    return written


def export_generator(t2i, generator: nn.Module, out: Path) -> Path:
    """Write the pipeline folder, the LoRA weights (if any), ``sampling.json`` and the model card under ``out``."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    cfg, bb = t2i.cfg, t2i.cfg.backbone
    denoiser, frozen = generator.denoiser, cfg.export_frozen
    adapter = generator_adapter(denoiser)
    save_merged_network(denoiser.net, adapter, out / bb.network, dtype=DTYPES[cfg.export_dtype])
    bb.sampling_scheduler(t2i.generator_scheduler_config, cfg.generator_renoise).save_pretrained(out / "scheduler")
    if frozen != "network":
        base = local_folder(cfg.pretrained, "backbone.pretrained", ["model_index.json"])
        model_index = json.loads((base / "model_index.json").read_text())
        components = frozen_components(model_index, bb.network)
        base = base_folder(cfg.pretrained, components)
        place_frozen(base, out, components, frozen)
        scheduler_cls = json.loads((out / "scheduler" / "scheduler_config.json").read_text())["_class_name"]
        atomic_write_text(json.dumps({**model_index, "scheduler": ["diffusers", scheduler_cls]}, indent=2), out / "model_index.json")
    if adapter is not None and cfg.export_lora:
        save_lora(bb, lora_state_dict(denoiser.net, adapter), out / "lora")
        if bb.kohya_lora:
            save_kohya_lora(denoiser.net, adapter, bb.network, out / "lora_kohya.safetensors")
    info = sampling_info(t2i, generator, frozen)
    atomic_write_text(json.dumps(info, indent=2), out / "sampling.json")
    atomic_write_text(model_card(info, adapter is not None and cfg.export_lora, disk_bytes(out)), out / "README.md")
    return out


def save_lora(backbone, layers: dict, folder: Path) -> None:
    """The LoRA weights as the backbone's stock pipeline saves them (``pipe.load_lora_weights`` reads them)."""
    backbone.pipeline_cls().save_lora_weights(folder, **{f"{backbone.network}_lora_layers": layers})


def save_kohya_lora(net: nn.Module, adapter: str, network: str, path: Path) -> None:
    """The LoRA in the kohya key layout (``lora_unet_...``, with each module's alpha) that A1111 and
    ComfyUI load, by diffusers' converter from peft's state dict."""
    from diffusers.utils.state_dict_utils import convert_state_dict_to_kohya
    from peft.utils import get_peft_model_state_dict
    from safetensors.torch import save_file

    peft = get_peft_model_state_dict(net, adapter_name=adapter)
    kohya = convert_state_dict_to_kohya({f"{network}.{k}": v for k, v in peft.items()})
    alpha = float(net.peft_config[adapter].lora_alpha)  # the converter writes alpha = rank, right only when they are equal
    kohya.update({key: torch.tensor(alpha) for key in kohya if key.endswith(".alpha")})
    save_file({k: v.contiguous() for k, v in kohya.items()}, str(path))


def disk_bytes(folder: Path) -> dict[str, int]:
    """Bytes each top-level entry of the export takes (a link takes none)."""
    sizes = {}
    for entry in sorted(folder.iterdir()):
        if entry.is_symlink():
            sizes[entry.name] = 0
        elif entry.is_dir():
            sizes[entry.name] = sum(f.stat().st_size for f in entry.rglob("*") if f.is_file() and not f.is_symlink())
        else:
            sizes[entry.name] = entry.stat().st_size
    return sizes


def model_card(info: dict, lora: bool, sizes: dict[str, int]) -> str:
    call = ", ".join(f"{k}={v!r}" for k, v in info["call"].items())
    load = ("pipe = DiffusionPipeline.from_pretrained(\"OUT/export\")" if info["frozen"] != "network" else
            f"pipe = DiffusionPipeline.from_pretrained({info['base']!r}, {info['network']}=AutoModel.from_pretrained(\"OUT/export/{info['network']}\"),\n"
            f"                                         scheduler={info['scheduler']}.from_pretrained(\"OUT/export/scheduler\"))")
    size_lines = "\n".join(f"| {k} | {v / 2**20:,.1f} MiB |" for k, v in sizes.items())
    lines = [
        f"# A {len(info['times'])}-step {info['kind']} generator trained with didr",
        "",
        f"Base pipeline: `{info['base']}` ({info['pipeline']}). Generator times {info['times']}, "
        f"{'fresh noise' if info['renoise'] == 'fresh' else 'deterministic DDIM / Euler steps'} between steps.",
        "",
        "```python",
        "import torch",
        "from diffusers import AutoModel, DiffusionPipeline" + (f", {info['scheduler']}" if info["frozen"] == "network" else ""),
        "",
        load,
        f"image = pipe(\"a photo of a cat\", generator=torch.Generator().manual_seed(0), {call}).images[0]",
        "```",
        "",
        "The same seed gives the same image as `didr sample RUN --seed 0`.",
    ]
    if lora:
        lines += ["", "The LoRA alone: `pipe.load_lora_weights(\"OUT/export/lora\")` on the base pipeline"
                  + (" (`lora_kohya.safetensors` for A1111 and ComfyUI)." if "lora_kohya.safetensors" in sizes else ".")]
    lines += ["", f"Frozen parts stored as: `{info['frozen']}` (`backbone.export_frozen`: copy | link | network).", "",
              "| entry | on disk |", "|---|---|", size_lines, ""]
    return "\n".join(lines)
