"""Memory estimate for DIDR on SDXL (DMD2 one-step UNet) and Z-Image at batch 1 per GPU.

    python benchmarks/memory_estimate.py      # prints the table of benchmarks/results/memory_estimate.md

Parameter counts come from the real models' configs (SDXL base 1.0's unet/ and vae/, Z-Image's
transformer/ (diffusers' ZImageTransformer2DModel defaults are its config) and Flux-style VAE), built
on the meta device: no weights, no memory. Activations are measured, not guessed: one forward
pass on meta tensors in bf16 at 1024 px, summing the bytes of every tensor autograd saves for the
backward pass (each tensor once, parameters excluded), with attention saving what flash / memory-
efficient SDPA saves (q, k, v, output and a float32 log-sum-exp), not the N x N matrix.
With gradient checkpointing of every block, what stays is the tensors saved outside the blocks
plus the largest single block, recomputed one at a time.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from accelerate import init_empty_weights

GIB = 2**30
SDXL_UNET = dict(  # stabilityai/stable-diffusion-xl-base-1.0 unet/config.json (DMD2's generator has the same shapes)
    sample_size=128, in_channels=4, out_channels=4, layers_per_block=2, block_out_channels=(320, 640, 1280),
    down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
    up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"), transformer_layers_per_block=(1, 2, 10),
    attention_head_dim=(5, 10, 20), cross_attention_dim=2048, use_linear_projection=True, addition_embed_type="text_time",
    addition_time_embed_dim=256, projection_class_embeddings_input_dim=2816,
)
SDXL_VAE = dict(block_out_channels=(128, 256, 512, 512), down_block_types=("DownEncoderBlock2D",) * 4,
                up_block_types=("UpDecoderBlock2D",) * 4, layers_per_block=2, latent_channels=4, sample_size=1024)
ZIMAGE_VAE = dict(SDXL_VAE, latent_channels=16, use_quant_conv=False, use_post_quant_conv=False)
TEXT_PARAMS = {"sdxl": 123_060_480 + 694_659_840, "zimage": 4_022_468_096}  # CLIP-L + OpenCLIP bigG text towers; Qwen3-4B


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
    """Bytes autograd saves, each tensor once, parameters excluded; per top-level block too."""

    def __init__(self, params):
        self.params = {id(p) for p in params}
        self.seen, self.total = set(), 0

    def pack(self, t):
        if id(t) not in self.params and id(t) not in self.seen:
            self.seen.add(id(t))
            self.total += t.numel() * t.element_size()
        return t


def measure(model, blocks, call) -> tuple[float, float]:
    """(GiB saved without checkpointing, GiB with every block checkpointed)."""
    counter, starts, sizes = SavedBytes(model.parameters()), {}, []
    hooks = []
    for b in blocks:
        hooks.append(b.register_forward_pre_hook(lambda m, a: starts.__setitem__(id(m), counter.total)))
        hooks.append(b.register_forward_hook(lambda m, a, o: sizes.append(counter.total - starts[id(m)])))
    original, F.scaled_dot_product_attention = F.scaled_dot_product_attention, sdpa
    try:
        with torch.autograd.graph.saved_tensors_hooks(counter.pack, lambda t: t):
            call()
    finally:
        F.scaled_dot_product_attention = original
        for h in hooks:
            h.remove()
    outside = counter.total - sum(sizes)
    return counter.total / GIB, (outside + max(sizes)) / GIB


def meta(shape, grad=False):
    return torch.randn(*shape, device="meta", dtype=torch.bfloat16, requires_grad=grad)


def build(cls, **cfg):
    with init_empty_weights():
        return cls(**cfg).to(torch.bfloat16)


def sdxl() -> dict:
    from diffusers import UNet2DConditionModel

    unet = build(UNet2DConditionModel, **SDXL_UNET)
    blocks = list(unet.down_blocks) + [unet.mid_block] + list(unet.up_blocks)
    blocks = [m for b in blocks for m in list(getattr(b, "resnets", [])) + list(getattr(b, "attentions", []) or [])]
    cond = dict(encoder_hidden_states=meta((1, 77, 2048)), added_cond_kwargs=dict(text_embeds=meta((1, 1280)), time_ids=meta((1, 6))))
    act = measure(unet, blocks, lambda: unet(meta((1, 4, 128, 128), True), torch.tensor([399.0], device="meta"), **cond))
    return dict(net=unet, act=act)


def zimage() -> dict:
    from diffusers import ZImageTransformer2DModel

    net = build(ZImageTransformer2DModel)
    blocks = list(net.noise_refiner) + list(net.context_refiner) + list(net.layers)
    act = measure(net, blocks, lambda: net([meta((16, 1, 128, 128), True)], torch.tensor([0.5], device="meta"), [meta((256, 2560))]))
    return dict(net=net, act=act)


def vae_decode(cfg: dict) -> tuple[int, tuple[float, float]]:
    from diffusers import AutoencoderKL

    vae = build(AutoencoderKL, **cfg)
    blocks = list(vae.decoder.up_blocks) + [vae.decoder.mid_block]
    c = cfg["latent_channels"]
    return sum(p.numel() for p in vae.parameters()), measure(vae, blocks, lambda: vae.decode(meta((1, c, 128, 128), True)))


def lora_params(net, rank: int, targets=("to_q", "to_k", "to_v", "to_out.0")) -> int:
    return sum(rank * (m.in_features + m.out_features) for n, m in net.named_modules()
               if isinstance(m, torch.nn.Linear) and any(n.endswith("." + t) for t in targets))


def main() -> None:
    rows = []
    for name, fn, vae_cfg in (("SDXL (DMD2 UNet)", sdxl, SDXL_VAE), ("Z-Image (6B DiT)", zimage, ZIMAGE_VAE)):
        out = fn()
        n = sum(p.numel() for p in out["net"].parameters())
        vae_n, vae_act = vae_decode(vae_cfg)
        key = "sdxl" if "SDXL" in name else "zimage"
        rows.append((name, n, lora_params(out["net"], 64), vae_n, TEXT_PARAMS[key], out["act"], vae_act))
    print("| backbone | network params | LoRA r=64 params (attention q,k,v,out) | VAE params | text encoder params | "
          "network activations, GiB (no ckpt / ckpt) | VAE decode activations, GiB (no ckpt / ckpt) |")
    print("|---|---|---|---|---|---|---|")
    for name, n, lora, vae_n, text, act, vae_act in rows:
        print(f"| {name} | {n:,} | {lora:,} | {vae_n:,} | {text:,} | {act[0]:.2f} / {act[1]:.2f} | {vae_act[0]:.2f} / {vae_act[1]:.2f} |")


if __name__ == "__main__":
    main()
