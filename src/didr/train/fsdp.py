"""Sharded training with FSDP2 (``torch.distributed.fsdp.fully_shard``): one code path on CPUs (gloo) and GPUs (NCCL).

Launch with ``accelerate launch --config_file configs/accelerate/fsdp2.yaml -m didr train ...``. The
loop shards its networks itself and uses accelerate for the rest (processes, devices, autocast):
accelerate cannot drive this run. On a CPU it never turns FSDP on (it builds plain data parallelism
under the preset's name), and on GPUs its FSDP2 prepares one model per Accelerator (accelerate 1.16,
``Accelerator.prepare``: "Only one model is supported when using FSDP2"), while a run trains a
generator and a TA and queries a frozen reference, often all three over one shared network.

What is sharded: every network the roles run (:attr:`didr.train.loop.Alignment.networks`), trained
or frozen. Each of its blocks (the classes the preset names, else the network's own
``_no_split_modules``, as accelerate's transformer wrap policy takes them) is one FSDP unit, and the
network is the unit that holds the rest. FSDP2 all-gathers a unit's weights in a forward pre-hook
of the unit itself, so a network that several roles share (the frozen base with one LoRA adapter
per role, :class:`didr.models.shared.SharedDenoiser`) is gathered whichever role calls it. Each
parameter becomes a DTensor holding this process's rows; other references to the replaced
parameters within the roles (a role's own registry of its adapter weights) are rebound to the new
ones, so the optimisers, built afterwards, hold shards. Gradients are reduce-scattered after every
micro-batch; optimiser states are created on the shards.

Not sharded: the VAE, the reward and any frozen copy an objective keeps; they are whole on each
process, as under data parallelism.
"""

from __future__ import annotations

import copy
import os
from dataclasses import dataclass
from typing import Iterable

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.distributed.tensor import DTensor

from didr.errors import ConfigError

#: the preset's settings this loop does not implement, and why each is refused rather than ignored
UNSUPPORTED = {
    "FSDP_OFFLOAD_PARAMS": ("true", "CPU offload has not run here; set fsdp_offload_params: false"),
    "FSDP_ACTIVATION_CHECKPOINTING": ("true", "checkpointing is the run's own (backbone.gradient_checkpointing); set fsdp_activation_checkpointing: false"),
    "FSDP_CPU_RAM_EFFICIENT_LOADING": ("true", "every process loads the networks whole before sharding them; set fsdp_cpu_ram_efficient_loading: false"),
}


@dataclass(frozen=True)
class ShardingPlan:
    """How the networks are sharded: ``block_classes`` are the FSDP units inside each network
    (empty: each network's ``_no_split_modules``); ``reshard_after_forward`` frees the gathered
    weights after each forward (ZeRO-3) rather than keeping them until the backward (ZeRO-2)."""

    reshard_after_forward: bool = True
    block_classes: tuple[str, ...] = ()


def plan_from_launch() -> ShardingPlan | None:
    """The plan an ``accelerate launch`` FSDP preset asks for (its environment), None without one.
    Raises a ConfigError naming the preset field for what this loop does not do."""
    if os.environ.get("ACCELERATE_USE_FSDP", "false").lower() != "true":
        return None
    version = os.environ.get("FSDP_VERSION", "1")
    if version != "2":
        raise ConfigError(f"the launch asks for FSDP version {version}; didr shards with FSDP2: set fsdp_version: 2 "
                          "(configs/accelerate/fsdp2.yaml)")
    for var, (bad, why) in UNSUPPORTED.items():
        if os.environ.get(var, "false").lower() == bad:
            raise ConfigError(f"the FSDP preset's {var.lower()}: {why}")
    policy = os.environ.get("FSDP_AUTO_WRAP_POLICY", "TRANSFORMER_BASED_WRAP")
    if policy != "TRANSFORMER_BASED_WRAP":
        raise ConfigError(f"the FSDP preset's fsdp_auto_wrap_policy is {policy}; didr shards block by block: set TRANSFORMER_BASED_WRAP")
    kind = os.environ.get("FSDP_STATE_DICT_TYPE", "SHARDED_STATE_DICT")
    if kind != "SHARDED_STATE_DICT":
        raise ConfigError(f"the FSDP preset's fsdp_state_dict_type is {kind}; didr's checkpoints hold each process's shard: "
                          "set SHARDED_STATE_DICT (the export gathers whole weights)")
    reshard = os.environ.get("FSDP_RESHARD_AFTER_FORWARD", "true").lower()
    if reshard not in ("true", "false"):
        raise ConfigError(f"the FSDP preset's fsdp_reshard_after_forward must be true or false under FSDP2, got {reshard!r}")
    names = tuple(n.strip() for n in os.environ.get("FSDP_TRANSFORMER_CLS_TO_WRAP", "").split(",") if n.strip())
    return ShardingPlan(reshard_after_forward=reshard == "true", block_classes=names)


def is_sharded(t: Tensor) -> bool:
    return isinstance(t, DTensor)


def held_numel(tensors: Iterable[Tensor]) -> tuple[int, int]:
    """(elements this process holds, elements in all) of ``tensors``, sharded or whole."""
    held = total = 0
    for t in tensors:
        held += t.to_local().numel() if is_sharded(t) else t.numel()
        total += t.numel()
    return held, total


def blocks(net: nn.Module, names: tuple[str, ...]) -> list[nn.Module]:
    """The FSDP units inside ``net``: modules of the named classes, innermost first."""
    names = names or tuple(getattr(net, "_no_split_modules", None) or ())
    return [m for m in reversed(list(net.modules())) if m is not net and type(m).__name__ in names]


def meta_skeleton(net: nn.Module) -> nn.Module:
    """A copy of ``net`` whose parameters are on the meta device: its structure, for the whole
    network to be rebuilt later from gathered weights, at no memory cost."""
    memo = {id(p): nn.Parameter(torch.empty_like(p, device="meta"), requires_grad=p.requires_grad) for p in net.parameters()}
    return copy.deepcopy(net, memo)


class Sharded:
    """Networks sharded with FSDP2 over all processes (collective: every process builds it).

    ``networks``: the distinct networks, sharded in place; ``roles``: the modules that call them
    (generator, TA, reference), whose other references to the replaced parameters are rebound.
    The networks are moved to ``device`` and made equal to the main process's first, as DDP does.
    """

    def __init__(self, networks: list[nn.Module], roles: list[nn.Module], plan: ShardingPlan, device: torch.device):
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.fsdp import fully_shard

        check_disjoint(networks)
        self.plan, self.networks = plan, networks
        self.mesh = init_device_mesh(device.type, (dist.get_world_size(),))
        old = {}  # holds the replaced parameters alive until they are rebound: their ids stay theirs
        for net in networks:
            net.to(device)
            broadcast_from_main(net)
            old.update({id(p): (net, name, p) for name, p in net.named_parameters()})
        self.skeletons = [meta_skeleton(net) for net in networks]
        self.names = [type(net).__name__ for net in networks]
        for net in networks:
            for block in blocks(net, plan.block_classes):
                fully_shard(block, mesh=self.mesh, reshard_after_forward=plan.reshard_after_forward)
            fully_shard(net, mesh=self.mesh, reshard_after_forward=plan.reshard_after_forward)
        new = {key: net.get_parameter(name) for key, (net, name, _) in old.items()}
        for role in roles:
            rebind(role, new)

    def check_trained(self, module: nn.Module, role: str) -> None:
        """Every trainable parameter of ``module`` lies in a sharded network (otherwise nothing
        would average its gradient across the processes)."""
        loose = [n for n, p in module.named_parameters() if p.requires_grad and not is_sharded(p)]
        if loose:
            raise ConfigError(f"the {role}'s parameter {loose[0]} is not in any sharded network (Alignment.networks); "
                              f"{len(loose)} such parameter(s)")

    def report(self, optimizers: dict[str, torch.optim.Optimizer]) -> str:
        """What each process holds of every network's parameters and every optimiser's state,
        measured (collective). The optimisers' step counters are whole on every process."""
        nets = {f"network {i} ({name})": list(net.parameters()) for i, (name, net) in enumerate(zip(self.names, self.networks))}
        states = {f"{role} optimiser": [t for s in opt.state.values() for t in s.values() if isinstance(t, Tensor)]
                  for role, opt in optimizers.items()}
        return (f"sharded over {dist.get_world_size()} processes; parameters held: {'; '.join(holdings(nets, 'parameters'))}; "
                f"optimiser state held: {'; '.join(holdings(states, 'elements'))}")

    def unsharded_copy(self, module: nn.Module, main: bool) -> nn.Module | None:
        """A plain copy of ``module`` with every sharded network it calls rebuilt whole, on the
        main process (None on the others), in the networks' kept skeletons. Collective: each
        network's weights are gathered."""
        memo: dict[int, object] = {}
        for net, skeleton in zip(self.networks, self.skeletons):
            gathered = {name: whole(p, main) for name, p in net.named_parameters()}
            if not main:
                continue
            for name, p in skeleton.named_parameters():
                owner, _, leaf = name.rpartition(".")
                setattr(skeleton.get_submodule(owner), leaf, nn.Parameter(gathered[name], requires_grad=p.requires_grad))
            for name, b in net.named_buffers():  # FSDP2 leaves buffers whole; they may have changed since the skeleton was made
                owner, _, leaf = name.rpartition(".")
                skeleton.get_submodule(owner)._buffers[leaf] = b.detach().cpu().clone()
            memo[id(net)] = skeleton
            memo.update({id(p): skeleton.get_parameter(name) for name, p in net.named_parameters()})
        return copy.deepcopy(module, memo) if main else None


def whole(t: Tensor, main: bool) -> Tensor | None:
    """A sharded tensor gathered whole, on the CPU of the main process (collective); a whole one as it is."""
    full = t.full_tensor() if is_sharded(t) else t
    return full.detach().cpu() if main else None


def full_state_dict(module: nn.Module, main: bool) -> dict[str, Tensor]:
    """``module``'s state dict with every sharded tensor gathered whole, on the main process's CPU
    ({} elsewhere). Collective, one tensor at a time: the other processes hold one whole tensor at most."""
    out = {}
    for name, value in module.state_dict().items():
        got = whole(value, main)
        if main:
            out[name] = got
    return out


def broadcast_from_main(module: nn.Module) -> None:
    """Every process takes the main process's parameters and buffers (a LoRA's random start, say)."""
    with torch.no_grad():
        for t in [*module.parameters(), *module.buffers()]:
            dist.broadcast(t.data, src=0)


def rebind(module: nn.Module, new: dict[int, nn.Parameter]) -> None:
    """Point every registration in ``module`` of a replaced parameter (``id(old) -> new``) at the new one."""
    for m in module.modules():
        for key, p in list(m._parameters.items()):
            if p is not None and id(p) in new:
                m._parameters[key] = new[id(p)]


def check_disjoint(networks: list[nn.Module]) -> None:
    seen: set[int] = set()
    for net in networks:
        ids = {id(p) for p in net.parameters()}
        if ids & seen:
            raise ConfigError("Alignment.networks: two networks share parameters; list the shared network once")
        seen |= ids


def grad_norm(params: list[Tensor], max_norm: float) -> Tensor:
    """The gradients' global norm before clipping (clipped to ``max_norm`` unless infinite);
    sharded gradients are reduced across the processes, so every process gets the same value."""
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return torch.zeros(())
    if max_norm == float("inf"):
        norm = torch.nn.utils.get_total_norm(grads)
    else:
        norm = torch.nn.utils.clip_grad_norm_([p for p in params if p.grad is not None], max_norm)
    return norm.full_tensor() if is_sharded(norm) else norm


def holdings(groups: dict[str, list[Tensor]], unit: str) -> list[str]:
    """For each named group of tensors, what each process holds of it, measured (collective):
    ``name: 16,384 | 16,384 of 32,768 <unit> (50.0% | 50.0%)``."""
    mine = [held_numel(ts) for ts in groups.values()]
    everyone: list = [None] * dist.get_world_size()
    dist.all_gather_object(everyone, [held for held, _ in mine])
    lines = []
    for i, (name, (_, total)) in enumerate(zip(groups, mine)):
        held = [per_rank[i] for per_rank in everyone]
        shares = " | ".join(f"{100 * h / max(total, 1):.1f}%" for h in held)
        lines.append(f"{name}: {' | '.join(f'{h:,}' for h in held)} of {total:,} {unit} ({shares})")
    return lines
