"""LoRA adapters (peft) on diffusers networks: the generator's trainable weights, and the TA as an
adapter on the frozen reference so that the base weights are held once.

``add_lora`` freezes the base network and leaves only the named adapter trainable;
``merged_copy`` folds an adapter into a plain copy of the network, which stock diffusers loads.
"""

from __future__ import annotations

import copy

from torch import nn

DEFAULT_TARGETS = ["to_q", "to_k", "to_v", "to_out.0"]


def add_lora(net: nn.Module, rank: int, name: str, targets: list[str] | None = None, alpha: float | None = None) -> nn.Module:
    """Inject a rank-``rank`` LoRA adapter called ``name``; only its weights require gradients."""
    from peft import LoraConfig

    net.requires_grad_(False)
    config = LoraConfig(r=rank, lora_alpha=alpha or rank, target_modules=list(targets or DEFAULT_TARGETS), init_lora_weights=True)
    net.add_adapter(config, adapter_name=name)
    for pname, p in net.named_parameters():
        trainable = "lora_" in pname and f".{name}." in pname
        if trainable:
            p.data = p.data.float()  # adapters train in fp32 on a bf16 / fp16 base
        p.requires_grad_(trainable)
    return net


def has_lora(net: nn.Module) -> bool:
    return any("lora_" in n for n, _ in net.named_parameters())


def lora_state_dict(net: nn.Module, name: str) -> dict:
    """The adapter's weights with diffusers' key names (what ``save_lora_weights`` expects)."""
    from diffusers.utils import convert_state_dict_to_diffusers
    from peft.utils import get_peft_model_state_dict

    return convert_state_dict_to_diffusers(get_peft_model_state_dict(net, adapter_name=name))


def merged_copy(net: nn.Module) -> nn.Module:
    """A copy of ``net`` with its LoRA adapters fused into the base weights and the peft layers removed."""
    out = copy.deepcopy(net)
    if has_lora(out):
        out.fuse_lora()
        out.unload_lora()
    return out.requires_grad_(False)
