"""LoRA adapters (peft) on diffusers networks: the generator's trainable weights, and the TA as an
adapter on the frozen reference so that the base weights are held once. A generator that starts
from the reference itself is one more adapter on the same network (see :class:`didr.models.shared.SharedDenoiser`).

``add_lora`` freezes the base network and leaves only the named adapter trainable; ``load_lora``
brings a released LoRA file in as a named adapter (DMD2's SDXL LoRA, say); ``merged_tensors`` /
``merged_copy`` fold one adapter into the base weights, which is what stock diffusers loads;
``frozen_initial`` gives the network as it started (ReFL's regression target) without copying a
LoRA-trained one.
"""

from __future__ import annotations

import warnings
from contextlib import contextmanager
from copy import deepcopy
from typing import Any, Iterator

import torch
from torch import Tensor, nn

from didr.errors import ConfigError, ModelLoadError
from didr.models.shared import adapters_disabled

DEFAULT_TARGETS = ["to_q", "to_k", "to_v", "to_out.0"]


def _trainable_adapters(net: nn.Module) -> set[str]:
    return {n for n, p in net.named_parameters() if "lora_" in n and p.requires_grad}


def _train_only_adapters(net: nn.Module, keep: set[str], name: str) -> nn.Module:
    """Freeze everything but the adapter ``name`` and the adapters in ``keep``; adapters train in
    float32 on a bf16 / fp16 base. (peft's ``set_adapter``, called when an adapter is added,
    freezes every other adapter.)"""
    for pname, p in net.named_parameters():
        trainable = "lora_" in pname and (f".{name}." in pname or pname in keep)
        if trainable and p.dtype != torch.float32:
            p.data = p.data.float()
        p.requires_grad_(trainable)
    return net


@contextmanager
def several_adapters_by_design() -> Iterator[None]:
    """Silence peft's warning about several adapters in one model: one adapter per role over a
    shared frozen base is how didr holds the generator and the TA (didr.models.shared)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Already found a `peft_config` attribute")
        yield


def add_lora(net: nn.Module, rank: int, name: str, targets: list[str] | None = None, alpha: float | None = None) -> nn.Module:
    """Inject a rank-``rank`` LoRA adapter called ``name``; only adapter weights require gradients."""
    from peft import LoraConfig

    keep = _trainable_adapters(net)
    config = LoraConfig(r=rank, lora_alpha=alpha or rank, target_modules=list(targets or DEFAULT_TARGETS), init_lora_weights=True)
    with several_adapters_by_design():
        net.add_adapter(config, adapter_name=name)
    return _train_only_adapters(net, keep, name)


def load_lora(net: nn.Module, backbone, source: str, name: str) -> nn.Module:
    """Load a LoRA file or folder, in any format the backbone's stock pipeline's ``load_lora_weights``
    reads (diffusers, peft, kohya), into ``net`` as the trainable adapter ``name``; rank and alpha
    come from the file. The network's weights are those under its name (``unet``, ``transformer``)."""
    pipeline, prefix = backbone.pipeline_cls(), backbone.network
    keep = _trainable_adapters(net)
    try:
        out = pipeline.lora_state_dict(source)
    except (OSError, ValueError, EnvironmentError) as err:
        first = (str(err).strip().splitlines() or [type(err).__name__])[0][:200]
        raise ModelLoadError(f"backbone.generator_lora: cannot read LoRA weights from {source!r} ({first})") from err
    state, alphas = out if isinstance(out, tuple) else (out, None)
    if not any(k.startswith(prefix + ".") for k in state):
        raise ModelLoadError(f"backbone.generator_lora: {source} holds no {prefix} LoRA weights")
    with several_adapters_by_design():
        net.load_lora_adapter(state, network_alphas=alphas, adapter_name=name, prefix=prefix)
    if not any(f".{name}." in n for n, _ in net.named_parameters()):
        raise ModelLoadError(f"backbone.generator_lora: no weights of {source} fit this {prefix}")
    return _train_only_adapters(net, keep, name)


def adapter_rank(net: nn.Module, name: str) -> int:
    """The rank of adapter ``name`` (0 when the network has no such adapter)."""
    for n, p in net.named_parameters():
        if "lora_A" in n and f".{name}." in n:
            return int(p.shape[0])
    return 0


def has_lora(net: nn.Module) -> bool:
    return any("lora_" in n for n, _ in net.named_parameters())


def lora_state_dict(net: nn.Module, name: str) -> dict:
    """The adapter's weights with diffusers' key names (what ``save_lora_weights`` expects)."""
    from diffusers.utils import convert_state_dict_to_diffusers
    from peft.utils import get_peft_model_state_dict

    return convert_state_dict_to_diffusers(get_peft_model_state_dict(net, adapter_name=name))


def merged_tensors(net: nn.Module, adapter: str | None, dtype: torch.dtype | None = torch.float32,
                   copy: bool = False) -> Iterator[tuple[str, Tensor]]:
    """The plain network's weights (stock diffusers' key names) with adapter ``adapter`` folded in,
    one tensor at a time; every other adapter is left out. W + scale B A is formed in float32 from
    the base weight and the adapter, so a bf16 base loses nothing of a float32 adapter. ``dtype``:
    of every floating-point tensor (None keeps each tensor's own). ``copy``: never share storage
    with ``net`` (otherwise unchanged tensors may)."""
    from peft.tuners.lora import LoraLayer

    lora = {name: m for name, m in net.named_modules() if isinstance(m, LoraLayer)}
    for key, value in net.state_dict().items():
        if "lora_" in key or "lora_magnitude" in key:
            continue
        owner, _, leaf = key.rpartition(".base_layer.")
        if owner and owner in lora:
            out_key = f"{owner}.{leaf}"
            layer = lora[owner]
            if leaf == "weight" and adapter is not None and adapter in layer.lora_A:
                value = value.float() + layer.get_delta_weight(adapter).float()
        else:
            out_key = key
        if dtype is not None and value.is_floating_point():
            value = value.to(dtype, copy=copy)
        elif copy:
            value = value.clone()
        yield out_key, value.detach()


def merged_copy(net: nn.Module, adapter: str | None = None) -> nn.Module:
    """A plain float32 copy of ``net`` (no peft layers) with adapter ``adapter`` folded in."""
    from accelerate import init_empty_weights

    with init_empty_weights(include_buffers=False):
        out = type(net).from_config(dict(net.config))
    state = dict(merged_tensors(net, adapter, copy=True))
    missing = set(out.state_dict()) - set(state)
    if missing:
        raise ConfigError(f"merging adapter {adapter!r}: no weights for {', '.join(sorted(missing)[:3])}")
    out.load_state_dict(state, strict=True, assign=True)
    return out.float().requires_grad_(False)


class AdaptersOff(nn.Module):
    """``module`` called without gradients and with every LoRA adapter switched off: its frozen
    base, which is the network as it was before the adapters trained. No weights are copied; the
    module is held outside nn.Module's registry so that its parameters keep a single owner."""

    def __init__(self, module: nn.Module):
        super().__init__()
        self._module = (module,)

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        module = self._module[0]
        with torch.no_grad(), adapters_disabled(module):
            return module(*args, **kwargs)


class FrozenCopy(nn.Module):
    """A frozen copy of ``module`` that follows its first tensor argument's device (several
    processes move the trained module to their own device after this copy was made)."""

    def __init__(self, module: nn.Module):
        super().__init__()
        self.module = deepcopy(module).requires_grad_(False).eval()

    def forward(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
        first = next(self.module.parameters(), None)
        if first is not None and first.device != x.device:
            self.module.to(x.device)
        with torch.no_grad():
            return self.module(x, *args, **kwargs)


def frozen_initial(module: nn.Module) -> nn.Module:
    """The module as it stands now, frozen: for one trained through LoRA adapters (its base frozen
    by ``add_lora``), the same module with its adapters off; otherwise a frozen copy."""
    if has_lora(module) and not any(p.requires_grad for n, p in module.named_parameters() if "lora_" not in n):
        return AdaptersOff(module)
    return FrozenCopy(module)
