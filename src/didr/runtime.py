"""Where and how a process runs: which process writes, the machine it runs on, devices, dtypes and
process pools.

Every recorded result names its machine through :func:`machine`, so that figures from different
hosts are never compared unknowingly.
"""

from __future__ import annotations

import multiprocessing
import os
import platform
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Callable

import torch

from didr.errors import ConfigError

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def dtype_named(name: str, field: str) -> torch.dtype:
    """The torch dtype called ``name``; ``field`` names the setting in the error."""
    if name not in DTYPES:
        raise ConfigError(f"{field}: must be one of {', '.join(DTYPES)}, got {name!r}")
    return DTYPES[name]


def resolve_device(name: str) -> torch.device:
    """``auto`` is the first GPU when there is one, else the CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def is_main_process() -> bool:
    """The main process of a torchrun / accelerate launch (the only one that writes files)."""
    return int(os.environ.get("RANK", "0")) == 0


def cpu_model() -> str:
    """The processor's model name (Linux), else its architecture."""
    info = Path("/proc/cpuinfo")
    if info.is_file():
        for line in info.read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def memory_gib() -> float:
    """The host's physical memory, GiB (NaN where the OS does not say)."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    except (ValueError, OSError, AttributeError):
        return float("nan")


def machine() -> str:
    """One line naming the host: OS, processor, cores, memory, GPU, python, torch and its thread count."""
    gpu = "no GPU"
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        gpu = f"GPU {props.name} ({props.total_memory / 2**30:.0f} GiB), CUDA {torch.version.cuda}"
    return (f"{platform.platform()}, {cpu_model()}, {os.cpu_count()} CPUs, {memory_gib():.0f} GiB RAM, {gpu}, python {platform.python_version()}, "
            f"torch {torch.__version__}, {torch.get_num_threads()} torch thread(s)")


def load_average() -> float:
    """The 5-minute load average: how busy the shared cores were."""
    return round(os.getloadavg()[1], 2) if hasattr(os, "getloadavg") else float("nan")


def today() -> str:
    return time.strftime("%Y-%m-%d")


def process_pool(workers: int, initializer: Callable | None = None, initargs: tuple = ()) -> ProcessPoolExecutor:
    """``workers`` spawned processes (spawn: no fork of a process that holds torch threads)."""
    return ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn"),
                               initializer=initializer, initargs=initargs)


#: environment that turns the model libraries' chatter off (read when they are first imported)
QUIET_LIBRARIES = {"TRANSFORMERS_VERBOSITY": "error", "DIFFUSERS_VERBOSITY": "error", "HF_HUB_VERBOSITY": "error",
                   "HF_HUB_DISABLE_PROGRESS_BARS": "1", "TRANSFORMERS_NO_ADVISORY_WARNINGS": "1"}


_QUIET = False


def keep_quiet() -> None:
    """After :func:`quiet_libraries`, quiet the libraries imported since (diffusers keeps its progress
    bars on whatever the environment says): called before didr loads a pipeline."""
    if _QUIET:
        quiet_libraries()


def quiet_libraries() -> None:
    """Keep transformers', diffusers' and huggingface_hub's warnings and their progress bars (writing,
    loading and fetching shards) off the terminal, so that didr's own progress and a one-line error
    are what a user sees. Values the user set in the environment win."""
    import sys

    global _QUIET
    _QUIET = True
    import warnings

    # diffusers passes huggingface_hub an argument it has retired, on every load
    warnings.filterwarnings("ignore", message="The `local_dir_use_symlinks` argument is deprecated")
    for key, value in QUIET_LIBRARIES.items():
        os.environ.setdefault(key, value)
    bars_off = os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] == "1"
    for name in ("transformers", "diffusers"):  # imported already: the environment came too late for them
        if name in sys.modules:
            logging = sys.modules[name].utils.logging
            logging.set_verbosity(logging.ERROR if os.environ[f"{name.upper()}_VERBOSITY"] == "error" else logging.WARNING)
            if bars_off:
                logging.disable_progress_bar()
    if "huggingface_hub" in sys.modules:
        hub = sys.modules["huggingface_hub"]
        hub.utils.logging.set_verbosity(hub.utils.logging.ERROR if os.environ["HF_HUB_VERBOSITY"] == "error" else hub.utils.logging.WARNING)
        if bars_off:
            hub.utils.disable_progress_bars()
