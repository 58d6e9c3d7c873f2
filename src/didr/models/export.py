"""Export a trained generator in the formats stock diffusers tools load.

``OUT/export/`` receives:
- ``unet/`` or ``transformer/``: the generator's network (its LoRA folded in) as a diffusers model
  folder: ``UNet2DConditionModel.from_pretrained(OUT/export/unet)``, or put it into the base pipeline;
- ``lora/``: the LoRA weights alone, when the generator was trained with LoRA
  (``pipe.load_lora_weights(OUT/export/lora)``);
- ``sampling.json``: how to sample it: the generator's times, and the same as diffusers timesteps
  (SDXL: ``LCMScheduler`` with ``timesteps=[399]`` for DMD2) or sigmas (Z-Image:
  ``ZImagePipeline(..., sigmas=...)``, which applies the scheduler's shift to them), and how a
  few-step generator moves between steps (``renoise``: ``ddim`` is ZImagePipeline's Euler step,
  ``fresh`` is LCMScheduler's new noise).

The network folder is written shard by shard from the live network, one merged float32 tensor at
a time: a real-size generator is never copied whole, and when it shares its base with the TA
(one network, one adapter per role) only the generator's adapter is folded in.
"""

from __future__ import annotations

import json
from pathlib import Path

from torch import nn

from didr.models.lora import adapter_rank, lora_state_dict, merged_tensors

WEIGHTS = "diffusion_pytorch_model"
SHARD_BYTES = 2**30


def sampling_info(t2i, times: list[float]) -> dict:
    """How to sample the generator: its times, and the same as the stock pipeline's timesteps or sigmas."""
    cfg = t2i.cfg
    info = {"kind": cfg.kind, "network": cfg.network, "times": times, "renoise": cfg.generator_renoise,
            "latent_shape": list(t2i.latent_shape), "resolution": cfg.resolution}
    return {**info, **cfg.backbone.sampling(times, t2i.generator.schedule)}


def generator_adapter(denoiser: nn.Module) -> str | None:
    """The adapter that is the generator: a role's own (shared network), else "generator" if present."""
    role = getattr(denoiser, "adapter", None)
    if role is not None:
        return role
    return "generator" if adapter_rank(denoiser.net, "generator") else None


def save_merged_network(net: nn.Module, adapter: str | None, folder: Path, shard_bytes: int = SHARD_BYTES) -> Path:
    """``net`` with ``adapter`` folded in (and no other adapter), as a diffusers model folder in float32:
    ``config.json`` and safetensors shards (with diffusers' index when there are several)."""
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


def export_generator(t2i, generator: nn.Module, out: Path) -> Path:
    """Write the network folder, the LoRA weights (if any) and ``sampling.json`` under ``out``."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    denoiser = generator.denoiser
    adapter = generator_adapter(denoiser)
    save_merged_network(denoiser.net, adapter, out / t2i.cfg.network)
    if adapter is not None and t2i.cfg.export_lora:
        save_lora(t2i.cfg.backbone, lora_state_dict(denoiser.net, adapter), out / "lora")
    (out / "sampling.json").write_text(json.dumps(sampling_info(t2i, list(generator.times)), indent=2))
    return out


def save_lora(backbone, layers: dict, folder: Path) -> None:
    """The LoRA weights as the backbone's stock pipeline saves them (``pipe.load_lora_weights`` reads them)."""
    backbone.pipeline_cls().save_lora_weights(folder, **{f"{backbone.network}_lora_layers": layers})
