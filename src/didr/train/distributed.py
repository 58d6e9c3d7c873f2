"""Several processes through accelerate: the accelerator, the launch's parallelism, cross-rank agreement.

Launch data parallelism with ``torchrun --nproc_per_node N -m didr train ...`` or ``accelerate launch
--config_file configs/accelerate/ddp.yaml -m didr train ...``, and sharded training with
``configs/accelerate/fsdp2.yaml`` (FSDP2, :mod:`didr.train.fsdp`), on CPUs (gloo) as on GPUs. Without
a GPU the accelerator is built with ``cpu=True``: plain ``Accelerator()`` under torchrun on CPU would
start unsynchronised processes, so the run's log states the world size really in effect.

accelerate builds the processes, the devices and autocast; it never wraps a model for FSDP here
(the loop shards its networks itself), so the accelerator is built with the launch's FSDP flag
masked. DeepSpeed is refused: accelerate prepares one model per Accelerator under DeepSpeed, and
every method with a TA trains two (generator and TA).
"""

from __future__ import annotations

import contextlib
import math
import os
from typing import Any, Iterator

import torch
from torch import Tensor, nn

from didr.errors import ConfigError
from didr.train.fsdp import ShardingPlan, plan_from_launch


def check_launch() -> ShardingPlan | None:
    """The launch's sharding plan (None: data parallelism or one process); what didr cannot run
    (DeepSpeed, FSDP1, FSDP settings it does not implement) is refused before anything is written."""
    if os.environ.get("ACCELERATE_USE_DEEPSPEED", "false").lower() == "true":
        raise ConfigError("the launch asks for DeepSpeed, which didr does not run: accelerate prepares one model per Accelerator "
                          "under DeepSpeed, and a method with a TA trains two; shard with configs/accelerate/fsdp2.yaml")
    return plan_from_launch()


@contextlib.contextmanager
def _env(name: str, value: str) -> Iterator[None]:
    old = os.environ.get(name)
    os.environ[name] = value
    try:
        yield
    finally:
        if old is None:
            del os.environ[name]
        else:
            os.environ[name] = old


def make_accelerator(mixed_precision: str = "no"):
    """An Accelerator on the GPUs when there are any, else on the CPU (gloo across processes)."""
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState

    check_launch()
    # AcceleratorState is a process-wide singleton that refuses a second precision; the process
    # group (PartialState) is kept.
    AcceleratorState._reset_state(reset_partial_state=False)
    with _env("ACCELERATE_USE_FSDP", "false"):  # the loop shards its own networks (didr.train.fsdp)
        return Accelerator(cpu=not torch.cuda.is_available(), mixed_precision=mixed_precision)


def clip_grad_norm(acc, module: nn.Module, max_norm: float) -> Tensor | None:
    """``acc.clip_grad_norm_`` on a prepared (DDP-wrapped or plain) module's gradients; returns the
    norm before clipping."""
    from accelerate.utils import DistributedType

    plain = (DistributedType.NO, DistributedType.MULTI_CPU, DistributedType.MULTI_GPU)
    if math.isinf(max_norm) and acc.scaler is None and acc.distributed_type in plain:
        # nothing to clip (a factor of 1 would leave every bit): the norm alone, for the finiteness check
        return torch.nn.utils.get_total_norm([p.grad for p in module.parameters() if p.grad is not None])
    return acc.clip_grad_norm_(module.parameters(), max_norm)


def describe(acc, sharded: bool) -> str:
    """One line naming the processes in effect, for the run's log."""
    backend = torch.distributed.get_backend() if torch.distributed.is_initialized() else "none"
    parallelism = "fsdp2" if sharded else "ddp" if acc.num_processes > 1 else "none"
    return (f"world_size={acc.num_processes} parallelism={parallelism} backend={backend} "
            f"device={acc.device.type} mixed_precision={acc.mixed_precision}")


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
