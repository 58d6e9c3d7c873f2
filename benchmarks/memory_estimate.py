"""Memory of one DIDR training step on SDXL and Z-Image, estimated from the networks' shapes.

    python benchmarks/memory_estimate.py            # the table of benchmarks/results/memory_estimate.md
    python benchmarks/memory_estimate.py --backbone zimage --resolution 512 --n-layers 8 --batch 2 --show

The networks are the published configurations (``didr/models/configs``), built on the meta
device: no weights, no memory. Parameter counts are exact. Activations are measured, not
guessed. One forward pass runs on meta tensors in bf16, with the LoRA adapters attached as
training attaches them, and the script sums the bytes of every tensor that autograd saves for
the backward pass, each tensor once, parameters excluded. Attention saves what flash and
memory-efficient SDPA save: q, k, v, the output and a float32 log-sum-exp, never the N x N
matrix. This is measured for the generator's and the reference's network, the VAE decode and
the reward's vision tower. With checkpointing of every block, what stays alive is the tensors
saved outside the blocks plus the largest single block, recomputed one at a time.

How the parts add up (:func:`estimate`). The peak is the generator update:
- the generator's saved activations stay alive until its own backward pass;
- meanwhile the DRS estimate (M12) runs its backward pass, first through the reward and the VAE
  decode, then through the k reference calls, recomputed one at a time (``drp_checkpoint``). These
  phases do not overlap, so the larger of the two counts, not their sum. Each reference call runs
  at twice the batch under classifier-free guidance (M4);
- weights: the frozen networks in their storage dtype; each trainable parameter costs 16 bytes
  (float32 weight, gradient and AdamW's two states);
- on a CPU run, the process's own resident memory (interpreter, libraries) is measured and added.

Over N GPUs with FSDP2 (``--gpus N``, as ``configs/accelerate/fsdp2.yaml`` shards): the networks'
weights and the trainable state are divided by N (every network is sharded, frozen or not); the VAE,
the reward and the activations are not (each GPU runs its own batch). FSDP2 adds what it holds whole
for the network computing at the time (:func:`gathered`): its root unit (the parameters outside the
blocks); the block computing and the next one, whose all-gather output and unsharded copy coexist
while it is copied out; and for a fully trained network, the unsharded gradients of the root and of
one block with the reduce-scatter input they are copied into. The generator's root unit stays whole
from its forward to its backward.

The optimiser step is a peak of its own: AdamW (``foreach``) holds one more float32 copy of the
trainable parameters it steps (the square roots of its second moments) beside the weights, gradients
and states, after the activations are freed.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import functools
import json
from dataclasses import dataclass

import torch
import torch.nn.functional as F

GIB = 2**30
BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}
#: the text encoders run once at start-up to fill the embedding cache, then are dropped
TEXT_PARAMS = {"sdxl": 123_060_480 + 694_659_840, "zimage": 4_022_468_096}  # CLIP-L + OpenCLIP bigG text towers; Qwen3-4B
TOKENS = {"sdxl": 77, "zimage": 256}  # text tokens per prompt (SDXL: the padded 77; Z-Image: a typical prompt)


@dataclass
class Setting:
    """One training configuration, in the terms of the ``backbone`` / ``method`` config sections."""

    backbone: str = "sdxl"  # sdxl | zimage
    resolution: int = 1024  # image side in pixels
    batch: int = 1  # generator samples per step (per GPU)
    dtype: str = "bfloat16"  # storage of the frozen weights
    reward_dtype: str = "float32"  # what didr loads a reward in unless its spec says ?dtype=
    n_layers: int | None = None  # Z-Image main blocks (published: 30)
    n_refiner_layers: int | None = None  # Z-Image blocks in each of its two refiners (published: 2)
    lora_rank: int = 64  # the generator's; 0 = full fine-tuning
    ta_lora_rank: int = 64
    share_base: bool = True  # generator over the reference itself: no separate base (else a second copy)
    checkpointing: bool = True  # gradient checkpointing in the networks, between DRP steps and in the VAE decode
    guidance: bool = True  # classifier-free guidance on the reference: its calls run at twice the batch
    decode_downscale: float = 1.0
    text_tokens: int | None = None  # caption tokens per prompt (default: SDXL's padded 77, Z-Image 256)
    gpus: int = 1  # processes the networks are sharded over (FSDP2); 1 = no sharding
    reward: str = "pickscore"  # pickscore (CLIP ViT-H/14) | tiny (the tests' tiny random CLIP: no memory to speak of)


# --------------------------------------------------------------------------- measuring on meta tensors


class FlashLikeSDPA(torch.autograd.Function):
    """Saves what flash attention saves: q, k, v, the output and a float32 log-sum-exp per query."""

    @staticmethod
    def forward(ctx, q, k, v):
        out = torch.empty(q.shape[:-1] + (v.shape[-1],), dtype=q.dtype, device=q.device)
        ctx.save_for_backward(q, k, v, out, torch.empty(q.shape[:-1], dtype=torch.float32, device=q.device))
        return out

    @staticmethod
    def backward(ctx, grad):  # pragma: no cover - never run on meta tensors
        raise NotImplementedError


def sdpa(query, key, value, *args, **kw):  # diffusers calls it with positional or keyword q, k, v
    return FlashLikeSDPA.apply(query, key, value)


class SavedBytes:
    """Bytes autograd saves, each storage once, parameters excluded. A matmul saves its weight as a
    transposed view and reshapes save views of activations: a view counts as the tensor it views."""

    def __init__(self, params):
        self.params = {id(p) for p in params}
        self.seen, self.total = {}, 0  # id -> tensor: holding it keeps its id from being reused

    def pack(self, t):
        base = t._base if t._base is not None else t
        if id(base) not in self.params and id(base) not in self.seen:
            self.seen[id(base)] = base
            self.total += base.numel() * base.element_size()
        return t


@contextlib.contextmanager
def lora_input_copies():
    """Under autocast, each LoRA layer casts its input to float32 and the matmul casts it back: one
    new bf16 copy of the input per adapted layer, which the backward pass keeps. Meta tensors have
    no autocast, so the copy is made here."""
    from peft.tuners.lora.layer import LoraLayer

    original = LoraLayer._cast_input_dtype
    LoraLayer._cast_input_dtype = lambda self, x, dtype: x.clone()
    try:
        yield
    finally:
        LoraLayer._cast_input_dtype = original


def measure(model, blocks, call) -> tuple[float, float]:
    """(GiB saved without checkpointing, GiB with every block checkpointed)."""
    counter, starts, sizes = SavedBytes(model.parameters()), {}, []
    hooks = []
    for b in blocks:
        hooks.append(b.register_forward_pre_hook(lambda m, a: starts.__setitem__(id(m), counter.total)))
        hooks.append(b.register_forward_hook(lambda m, a, o: sizes.append(counter.total - starts[id(m)])))
    original, F.scaled_dot_product_attention = F.scaled_dot_product_attention, sdpa
    try:
        with torch.autograd.graph.saved_tensors_hooks(counter.pack, lambda t: t), lora_input_copies():
            call()
    finally:
        F.scaled_dot_product_attention = original
        for h in hooks:
            h.remove()
    outside = counter.total - sum(sizes)
    return counter.total / GIB, (outside + max(sizes)) / GIB


def meta(shape, grad=False, dtype=torch.bfloat16):
    return torch.randn(*shape, device="meta", dtype=dtype, requires_grad=grad)


def network(backbone: str, n_layers: int | None = None, lora_rank: int = 0, trainable: bool = False, n_refiner_layers: int | None = None):
    """The backbone's network on the meta device in bf16: frozen (a reference, a LoRA's base) or
    ``trainable`` (full fine-tuning), with a LoRA adapter if ``lora_rank``. A frozen weight needs no
    gradient, so autograd keeps fewer inputs: which weights train changes what is saved."""
    from accelerate import init_empty_weights

    from didr.models.lora import add_lora
    from didr.testing import true_shapes

    with init_empty_weights():
        net = true_shapes.sdxl_unet(torch.bfloat16) if backbone == "sdxl" else true_shapes.zimage_transformer(torch.bfloat16, n_layers, n_refiner_layers)
        net.requires_grad_(trainable)
        if lora_rank:
            add_lora(net, lora_rank, "adapter")
            for name, p in net.named_parameters():
                if "lora_" in name:
                    p.data = p.data.to(torch.bfloat16)  # autocast runs the adapters in bf16
    return net


def network_blocks(net, backbone: str):
    if backbone == "sdxl":
        blocks = list(net.down_blocks) + [net.mid_block] + list(net.up_blocks)
        return [m for b in blocks for m in list(getattr(b, "resnets", [])) + list(getattr(b, "attentions", []) or [])]
    return list(net.noise_refiner) + list(net.context_refiner) + list(net.layers)


@functools.lru_cache(maxsize=None)
def network_activations(backbone: str, batch: int, latent_side: int, n_layers: int | None, lora_rank: int,
                        trainable: bool = False, tokens: int | None = None, n_refiner_layers: int | None = None) -> tuple[float, float]:
    """GiB the network saves for backward at ``batch`` (no checkpointing, checkpointing)."""
    net = network(backbone, n_layers, lora_rank, trainable, n_refiner_layers)
    blocks = network_blocks(net, backbone)
    tokens = tokens or TOKENS[backbone]
    if backbone == "sdxl":
        cond = dict(encoder_hidden_states=meta((batch, tokens, 2048)),
                    added_cond_kwargs=dict(text_embeds=meta((batch, 1280)), time_ids=meta((batch, 6))))
        call = lambda: net(meta((batch, 4, latent_side, latent_side), True), torch.full((batch,), 399.0, device="meta"), **cond)  # noqa: E731
    else:
        frames = [meta((16, 1, latent_side, latent_side), True) for _ in range(batch)]
        caps = [meta((tokens, 2560)) for _ in range(batch)]
        call = lambda: net(frames, torch.full((batch,), 0.5, device="meta"), caps)  # noqa: E731
    return measure(net, blocks, call)


@functools.lru_cache(maxsize=None)
def vae_decode_activations(backbone: str, batch: int, latent_side: int) -> tuple[float, float]:
    from accelerate import init_empty_weights

    from didr.testing import true_shapes

    with init_empty_weights():
        vae = true_shapes.vae(backbone, torch.bfloat16)
    blocks = list(vae.decoder.up_blocks) + [vae.decoder.mid_block]
    c = vae.config.latent_channels
    return measure(vae, blocks, lambda: vae.decode(meta((batch, c, latent_side, latent_side), True)))


@functools.lru_cache(maxsize=None)
def reward_activations(batch: int, dtype: torch.dtype = torch.bfloat16) -> float:
    """GiB PickScore's vision tower (CLIP ViT-H/14 at 224 px) saves on the way to its image embedding."""
    from accelerate import init_empty_weights

    from didr.testing import true_shapes

    with init_empty_weights():
        clip = true_shapes.clip_h(dtype)
    call = lambda: clip.visual_projection(clip.vision_model(pixel_values=meta((batch, 3, 224, 224), True, dtype)).pooler_output)  # noqa: E731
    total, _ = measure(clip, list(clip.vision_model.encoder.layers), call)
    return total


@functools.lru_cache(maxsize=None)
def parameter_counts(backbone: str, n_layers: int | None, lora_rank: int, ta_lora_rank: int, n_refiner_layers: int | None = None) -> dict[str, int]:
    from accelerate import init_empty_weights

    from didr.testing import true_shapes

    net = network(backbone, n_layers, n_refiner_layers=n_refiner_layers)
    with init_empty_weights():
        vae = true_shapes.vae(backbone)
        clip = true_shapes.clip_h()
    return {
        "network": sum(p.numel() for p in net.parameters()),
        "lora": lora_params(net, lora_rank),
        "ta_lora": lora_params(net, ta_lora_rank),
        "vae": sum(p.numel() for p in vae.parameters()),
        "reward": sum(p.numel() for p in clip.parameters()),
        "text": TEXT_PARAMS[backbone],
    }


@functools.lru_cache(maxsize=None)
def fsdp_units(backbone: str, n_layers: int | None, n_refiner_layers: int | None = None) -> tuple[int, int]:
    """(parameters of FSDP2's root unit, of the largest block unit) as didr shards the network
    (``didr.train.fsdp``: each ``_no_split_modules`` block one unit, the rest the root's)."""
    from didr.train.fsdp import blocks

    net = network(backbone, n_layers, n_refiner_layers=n_refiner_layers)
    owner = {}
    for unit in blocks(net, ()):  # innermost first: a parameter belongs to the innermost unit holding it
        for p in unit.parameters():
            owner.setdefault(id(p), id(unit))
    sizes, root = {}, 0
    for p in net.parameters():
        if id(p) in owner:
            sizes[owner[id(p)]] = sizes.get(owner[id(p)], 0) + p.numel()
        else:
            root += p.numel()
    return root, max(sizes.values())


def gathered(s: Setting) -> float:
    """GiB FSDP2 holds whole at the peak (see the module's docstring)."""
    root, unit = fsdp_units(s.backbone, s.n_layers, s.n_refiner_layers)
    full_ft, ta_copy = s.lora_rank == 0, s.ta_lora_rank == 0
    gen_bytes = 4 if full_ft else BYTES[s.dtype]
    widest = max(BYTES[s.dtype], gen_bytes, 4 if ta_copy else 0)
    computing = (root + 3 * unit) * widest
    gen_root = root * gen_bytes if not s.share_base or full_ft else 0  # the shared network's root is the computing one
    grads = 2 * 4 * (root + unit) if full_ft or ta_copy else 0
    return (computing + gen_root + grads) / GIB


#: the parts FSDP2 divides over the processes
SHARDED = ("reference weights", "generator base weights", "TA copy weights", "trainable state")


def lora_params(net, rank: int, targets=("to_q", "to_k", "to_v", "to_out.0")) -> int:
    return sum(rank * (m.in_features + m.out_features) for n, m in net.named_modules()
               if isinstance(m, torch.nn.Linear) and any(n.endswith("." + t) for t in targets))


# --------------------------------------------------------------------------- adding up


def latent_side(s: Setting) -> int:
    return s.resolution // 8  # both VAEs downsample 8x


def estimate(s: Setting) -> dict[str, float]:
    """GiB per part, and ``total``, for one generator update (the peak of a DIDR step)."""
    n = parameter_counts(s.backbone, s.n_layers, s.lora_rank, s.ta_lora_rank, s.n_refiner_layers)
    w, rw = BYTES[s.dtype], BYTES[s.reward_dtype]
    side = latent_side(s)
    ref_batch = 2 * s.batch if s.guidance else s.batch
    ckpt = 1 if s.checkpointing else 0
    tok = s.text_tokens
    gen_act = network_activations(s.backbone, s.batch, side, s.n_layers, s.lora_rank, s.lora_rank == 0, tok, s.n_refiner_layers)[ckpt]
    ref_act = network_activations(s.backbone, ref_batch, side, s.n_layers, 0, False, tok, s.n_refiner_layers)[ckpt]
    ta_act = network_activations(s.backbone, s.batch, side, s.n_layers, s.ta_lora_rank, s.ta_lora_rank == 0, tok, s.n_refiner_layers)[ckpt]
    vae_act = vae_decode_activations(s.backbone, s.batch, max(1, round(side / s.decode_downscale)))[ckpt]
    reward_act = reward_activations(s.batch, getattr(torch, s.reward_dtype)) if s.reward == "pickscore" else 0.0
    full_ft, ta_copy = s.lora_rank == 0, s.ta_lora_rank == 0
    # a trainable parameter: float32 weight, gradient, AdamW's two states; a full network's weight is listed with the weights
    gen_state = 12 * n["network"] if full_ft else 16 * n["lora"]
    ta_state = 12 * n["network"] if ta_copy else 16 * n["ta_lora"]
    parts = {
        "reference weights": n["network"] * w / GIB,
        "generator base weights": 0.0 if (s.share_base and not full_ft) else n["network"] * (4 if full_ft else w) / GIB,
        "TA copy weights": n["network"] * 4 / GIB if ta_copy else 0.0,
        "VAE weights": n["vae"] * w / GIB,
        "reward weights": n["reward"] * rw / GIB if s.reward == "pickscore" else 0.0,
        "trainable state": (gen_state + ta_state) / GIB,
        "generator activations": gen_act,
        "DRS backward: max(reward + VAE decode, one reference call)": max(reward_act + vae_act, ref_act),
    }
    if s.gpus > 1:
        for k in SHARDED:
            parts[k] /= s.gpus
        parts["FSDP2 gathered weights and gradients"] = gathered(s)
    held = sum(v for k, v in parts.items() if "activations" not in k and "DRS" not in k)
    ta_step = held + ta_act
    trained = max(n["network"] if full_ft else n["lora"], n["network"] if ta_copy else n["ta_lora"])
    optimiser_step = held - parts.get("FSDP2 gathered weights and gradients", 0.0) + 4 * trained / s.gpus / GIB
    parts["total"] = max(sum(parts.values()), ta_step, optimiser_step)
    parts["parts (not in total): the optimiser step's peak"] = optimiser_step
    parts["parts (not in total): TA step activations"] = ta_act
    parts["parts (not in total): reward, VAE decode, one reference call"] = reward_act + vae_act + ref_act
    return parts


# --------------------------------------------------------------------------- the recorded table

PRESETS = {
    "LoRA generator over the reference, LoRA TA, checkpointing": dict(),
    "LoRA generator as a separate network (DMD2's UNet / Z-Image-Turbo), LoRA TA, checkpointing": dict(share_base=False),
    "the same, without checkpointing": dict(share_base=False, checkpointing=False),
    "full fine-tuning of a separate generator, LoRA TA, checkpointing": dict(share_base=False, lora_rank=0),
}


#: an 80 GB GPU's memory in GiB, less 3 GiB for the CUDA context and the allocator's fragmentation
FITS_80GB = 80e9 / GIB - 3


def table(batch: int, resolution: int, gpus: int = 8) -> str:
    """GiB per GPU for each preset, on one GPU and sharded over ``gpus`` (FSDP2)."""
    lines = [f"| configuration | SDXL, 1 GPU | SDXL, {gpus} GPUs | Z-Image, 1 GPU | Z-Image, {gpus} GPUs |", "|---|---|---|---|---|"]
    for name, kw in PRESETS.items():
        cells = []
        for b in ("sdxl", "zimage"):
            for n in (1, gpus):
                total = estimate(Setting(backbone=b, batch=batch, resolution=resolution, gpus=n, **kw))["total"]
                cells.append(f"{total:.1f}" + ("" if total <= FITS_80GB else " (over 80 GB)"))
        lines.append(f"| {name} | {' | '.join(cells)} |")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    for f in dataclasses.fields(Setting):
        parse = {"bool": lambda v: v.lower() in ("1", "true", "yes"), "int": int, "float": float, "str": str}
        kind = parse[str(f.type).split()[0].split("|")[0].strip()]
        p.add_argument("--" + f.name.replace("_", "-"), type=kind, default=None)
    p.add_argument("--show", action="store_true", help="print one setting's parts as JSON instead of the table")
    args = p.parse_args()
    given = {f.name: getattr(args, f.name) for f in dataclasses.fields(Setting) if getattr(args, f.name) is not None}
    if args.show:
        print(json.dumps({k: round(v, 3) for k, v in estimate(Setting(**given)).items()}, indent=2))
        return
    print(table(given.get("batch", 1), given.get("resolution", 1024), given.get("gpus", 8)))


if __name__ == "__main__":
    main()
