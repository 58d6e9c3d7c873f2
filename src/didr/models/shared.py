"""Several roles on one network: the frozen reference, the LoRA TA and a LoRA generator as named peft
adapters over one set of base weights, held once (:class:`SharedDenoiser`), and the adapter
switching and checkpointing that keep the roles apart."""

from __future__ import annotations

import contextlib
import copy
from typing import Any

from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint as grad_checkpoint

from didr.diffusion.denoiser import NetworkDenoiser, score_from_x0
from didr.diffusion.schedules import NoiseSchedule
from didr.errors import ConfigError


class SharedDenoiser(nn.Module):
    """One role of a network that several roles share: the plain base (``adapter=None``: the frozen
    reference) or one named peft adapter on it (``"ta"``: the LoRA TA; ``"generator"``: a LoRA
    generator over the reference, DI-style or like DMD2's released LoRA). The base weights are held once.

    The network is not a submodule (a tuple hides it): a role's parameters, ``state_dict`` and
    ``requires_grad_`` are its own adapter's weights alone, registered in ``weights``. So the TA's
    optimiser, checkpoint and DDP wrapper never see the generator's adapter or the frozen base, and
    ``reference.requires_grad_(False)`` freezes nothing.

    Each call runs with the role's adapter switched on and the others off (:func:`active_adapter`).
    That is module state, and a block checkpointed in one role's call is recomputed during a later
    backward pass, when another role may be active: enable the network's checkpointing with
    :func:`enable_checkpointing`, whose recomputation re-enters the adapter state of its forward call.
    """

    def __init__(self, base: NetworkDenoiser, adapter: str | None = None):
        super().__init__()
        self._base = (base,)  # a tuple hides it from nn.Module's registry
        self.adapter = adapter
        own = adapter_parameters(base.net, adapter) if adapter is not None else {}
        if adapter is not None and not own:
            raise ConfigError(f"the network has no adapter named {adapter!r}")
        self.weights = nn.ParameterDict({name.replace(".", "/"): p for name, p in own.items()})

    @property
    def base(self) -> NetworkDenoiser:
        return self._base[0]

    @property
    def net(self) -> nn.Module:
        return self._base[0].net

    @property
    def schedule(self) -> NoiseSchedule:
        return self._base[0].schedule

    def __getattr__(self, name: str):
        try:
            return super().__getattr__(name)
        except AttributeError:
            if name.startswith("_"):
                raise
            return getattr(self._base[0], name)  # e.g. the base's own dsm_weight

    def forward(self, x_t: Tensor, t: Tensor, cond: Any = None) -> Tensor:
        require_role_safe_checkpointing(self.net)
        with active_adapter(self.net, self.adapter):
            return self._base[0](x_t, t, cond)

    def score(self, x_t, t, cond=None):
        return score_from_x0(self(x_t, t, cond), x_t, t, self.schedule)

    def __deepcopy__(self, memo):
        """A copy (an EMA of a role, say) shares the frozen base weights and copies the adapters."""
        for p in self.net.parameters():
            if not p.requires_grad:
                memo.setdefault(id(p), p)
        new = self.__class__.__new__(self.__class__)
        memo[id(self)] = new
        new.__dict__.update(copy.deepcopy(self.__dict__, memo))
        return new


def adapter_parameters(net: nn.Module, adapter: str) -> dict[str, nn.Parameter]:
    """The LoRA weights of the peft adapter ``adapter`` in ``net``, by parameter name."""
    return {n: p for n, p in net.named_parameters() if "lora_" in n and f".{adapter}." in n}


def lora_layers(module: nn.Module) -> list[nn.Module]:
    from peft.tuners.tuners_utils import BaseTunerLayer

    return [m for m in module.modules() if isinstance(m, BaseTunerLayer)]


def _adapter_state(layers: list[nn.Module]) -> list[tuple[bool, Any]]:
    return [(m._disable_adapters, m._active_adapter) for m in layers]


def _set_adapter_state(layers: list[nn.Module], state: list[tuple[bool, Any]]) -> None:
    for m, (off, active) in zip(layers, state):
        m._disable_adapters, m._active_adapter = off, active


@contextlib.contextmanager
def active_adapter(net: nn.Module, name: str | None):
    """For the duration, every peft LoRA layer of ``net`` runs adapter ``name`` alone, or none
    (``None``: the plain base network). ``requires_grad`` is left alone: peft's own
    ``set_adapter`` / ``disable_adapters`` also freeze the other adapters, which would stop their training."""
    layers = lora_layers(net)
    saved = _adapter_state(layers)
    _set_adapter_state(layers, [(name is None, [name] if name is not None else active) for _, active in saved])
    try:
        yield
    finally:
        _set_adapter_state(layers, saved)


@contextlib.contextmanager
def adapters_disabled(module: nn.Module):
    """For the duration, ``module`` runs its frozen base: every peft LoRA layer in it is off, and
    every role in it (:class:`SharedDenoiser`, whose network is not a submodule) runs the plain
    base. ``requires_grad`` is left alone."""
    roles = [m for m in module.modules() if isinstance(m, SharedDenoiser)]
    adapters = [r.adapter for r in roles]
    layers = lora_layers(module)
    saved = _adapter_state(layers)
    _set_adapter_state(layers, [(True, active) for _, active in saved])
    for r in roles:
        r.adapter = None
    try:
        yield
    finally:
        for r, a in zip(roles, adapters):
            r.adapter = a
        _set_adapter_state(layers, saved)


def role_checkpoint(module: nn.Module, *args):
    """diffusers' per-block checkpoint function, safe under adapter switching: the recomputation in
    the backward pass runs with the adapter state that the forward call had."""
    layers = lora_layers(module)
    state = _adapter_state(layers)

    def run(*inputs):
        now = _adapter_state(layers)
        _set_adapter_state(layers, state)
        try:
            return module(*inputs)
        finally:
            _set_adapter_state(layers, now)

    return grad_checkpoint(run, *args, use_reentrant=False)


def enable_checkpointing(net: nn.Module) -> nn.Module:
    """diffusers' block-by-block gradient checkpointing, recomputing each block under the adapter
    state of its forward call (:func:`role_checkpoint`)."""
    net.enable_gradient_checkpointing(role_checkpoint)
    return net


def require_role_safe_checkpointing(net: nn.Module) -> None:
    """Refuse a shared network whose blocks are checkpointed by a function that ignores adapter state."""
    for m in net.modules():
        if getattr(m, "gradient_checkpointing", False) is True:
            func = getattr(m, "_gradient_checkpointing_func", None)
            if func is not None and func is not role_checkpoint:
                raise ConfigError("a network shared between roles must enable checkpointing with "
                                  "didr.models.shared.enable_checkpointing, not enable_gradient_checkpointing()")
            return
