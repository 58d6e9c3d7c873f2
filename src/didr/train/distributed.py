"""Several processes through accelerate: the accelerator, per-rank seeding, cross-rank agreement.

Launch with ``torchrun --nproc_per_node N -m didr train ...`` or ``accelerate launch --config_file
configs/accelerate/ddp.yaml -m didr train ...``. Without a GPU the accelerator is built with
``cpu=True``: plain ``Accelerator()`` under torchrun on CPU would start unsynchronised processes,
so the run's log states the world size really in effect.

Sharded launches (the FSDP and DeepSpeed presets) need GPUs. accelerate (1.15) turns FSDP on only
for GPU-like devices and DeepSpeed only when not on the CPU; on a CPU it builds plain data
parallelism (MULTI_CPU) under the sharded preset's name, and FSDP's ``sync_module_states`` stops
it earlier still. Such a launch is refused here rather than run as something it is not (torch
itself shards on CPU with gloo; accelerate does not drive it).
"""

from __future__ import annotations

import math
import os
import random
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from didr.errors import ConfigError

#: what ``accelerate launch --config_file`` sets for each sharded distributed type
SHARDED_LAUNCHES = {"FSDP": "ACCELERATE_USE_FSDP", "DEEPSPEED": "ACCELERATE_USE_DEEPSPEED"}


def requested_sharding() -> str | None:
    """FSDP or DEEPSPEED when the launch asks for it (accelerate's environment), else None."""
    for kind, var in SHARDED_LAUNCHES.items():
        if os.environ.get(var, "false").lower() == "true":
            return kind
    return None


def check_sharded_launch() -> None:
    """Refuse a sharded launch on a machine where accelerate cannot shard (no GPU)."""
    kind = requested_sharding()
    if kind is not None and not torch.cuda.is_available():
        raise ConfigError(f"the launch asks for {kind}, which accelerate runs on GPUs only; on this CPU it would train unsharded "
                          f"under the preset's name. On CPU launch with torchrun or configs/accelerate/ddp.yaml")


def check_prepare(acc, models: int) -> None:
    """accelerate prepares one model per Accelerator under DeepSpeed; methods with a TA train two."""
    from accelerate.utils import DistributedType

    if acc.distributed_type == DistributedType.DEEPSPEED and models > 1:
        raise ConfigError(f"DeepSpeed: accelerate prepares one model per Accelerator, and this run trains {models} (generator and TA); "
                          "use the FSDP or DDP preset")


def make_accelerator(mixed_precision: str = "no"):
    """An Accelerator on the GPUs when there are any, else on the CPU (gloo across processes)."""
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState

    check_sharded_launch()
    # AcceleratorState is a process-wide singleton that refuses a second precision; the process
    # group (PartialState) is kept.
    AcceleratorState._reset_state(reset_partial_state=False)
    acc = Accelerator(cpu=not torch.cuda.is_available(), mixed_precision=mixed_precision)
    kind = requested_sharding()
    if kind is not None and acc.distributed_type.value != kind:
        raise ConfigError(f"the launch asks for {kind} but accelerate set up {acc.distributed_type.value}")
    return acc


def shards_optimizer(acc) -> bool:
    """FSDP and DeepSpeed keep a shard of the optimiser state on each process: each one saves its
    own, and a resume needs the same number of processes."""
    from accelerate.utils import DistributedType

    return acc.distributed_type in (DistributedType.FSDP, DistributedType.DEEPSPEED)


def clip_grad_norm(acc, module: nn.Module, max_norm: float) -> Tensor | None:
    """``acc.clip_grad_norm_`` on a prepared module's gradients; returns the norm before clipping.

    Under FSDP (1) the wrapper's own ``clip_grad_norm_``: accelerate's finds the model by comparing
    parameter lists with ``==``, which raises as soon as two prepared models (generator and TA)
    have as many parameters and it reaches the wrong one first.
    """
    from accelerate.utils import DistributedType
    from torch.distributed.fsdp import FullyShardedDataParallel as FSDP

    if isinstance(module, FSDP):
        acc.unscale_gradients()
        return module.clip_grad_norm_(max_norm)
    plain = (DistributedType.NO, DistributedType.MULTI_CPU, DistributedType.MULTI_GPU)
    if math.isinf(max_norm) and acc.scaler is None and acc.distributed_type in plain:
        # nothing to clip (a factor of 1 would leave every bit): the norm alone, for the finiteness check
        return torch.nn.utils.get_total_norm([p.grad for p in module.parameters() if p.grad is not None])
    return acc.clip_grad_norm_(module.parameters(), max_norm)


def describe(acc) -> str:
    """One line naming the processes in effect, for the run's log."""
    backend = torch.distributed.get_backend() if torch.distributed.is_initialized() else "none"
    return (
        f"world_size={acc.num_processes} distributed_type={acc.distributed_type.value} backend={backend} "
        f"device={acc.device.type} mixed_precision={acc.mixed_precision}"
    )


def seed_all(seed: int) -> None:
    """Seed torch (CPU and GPUs), numpy and python: every source of randomness the loop uses."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def any_rank(acc, flag: bool) -> bool:
    """True on every process if ``flag`` is true on any: keeps skip and stop decisions in step,
    so no process waits in a collective that the others left."""
    if acc.num_processes == 1:
        return flag
    t = torch.tensor([1.0 if flag else 0.0], device=acc.device)
    return bool(acc.reduce(t, "sum").item() > 0)


def reduce_logs(acc, logs: dict[str, float]) -> dict[str, float]:
    """Each metric's mean over the processes (every process must call this with the same keys)."""
    if acc.num_processes == 1 or not logs:
        return logs
    keys = sorted(logs)
    t = torch.tensor([float(logs[k]) for k in keys], dtype=torch.float64, device=acc.device)
    return dict(zip(keys, acc.reduce(t, "mean").tolist()))


def fingerprint(module: nn.Module) -> str:
    """A sha256 of the module's parameters and buffers, bit for bit."""
    import hashlib

    h = hashlib.sha256()
    for name, v in sorted(module.state_dict().items()):
        h.update(name.encode())
        h.update(v.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes() if v.numel() else b"")
    return h.hexdigest()


def same_on_all_ranks(acc, module: nn.Module) -> tuple[bool, str]:
    """Whether ``module`` is bit-identical on every process, and this process's fingerprint.
    Catches processes that train without synchronising (e.g. a launch that DDP never reached)."""
    digest = fingerprint(module)
    if acc.num_processes == 1:
        return True, digest
    code = torch.tensor([int(digest[:15], 16)], dtype=torch.int64, device=acc.device)
    gathered = acc.gather(code)
    return bool((gathered == gathered[0]).all()), digest


class Prepared:
    """A prepared (possibly DDP / FSDP wrapped) module that still shows its own attributes.

    Calls go through the wrapper, so gradients are synchronised; attributes such as ``schedule``
    or ``dsm_weight``, which the wrapper hides, come from the module itself.
    """

    def __init__(self, wrapped: nn.Module, module: nn.Module):
        self.wrapped, self.module = wrapped, module

    def __call__(self, *args: Any, **kwargs: Any) -> Tensor:
        return self.wrapped(*args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.module, name)


def to_device(x: Any, device: torch.device) -> Any:
    """Tensors (also inside lists, tuples and dicts) moved to ``device``; anything else unchanged."""
    if isinstance(x, Tensor):
        return x.to(device)
    if isinstance(x, (list, tuple)):
        return type(x)(to_device(v, device) for v in x)
    if isinstance(x, dict):
        return {k: to_device(v, device) for k, v in x.items()}
    return x
