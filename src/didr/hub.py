"""Weight references, and loading weights from them.

Every weight a run names (a pipeline, a network, a state-dict file, a LoRA, a reward model) is a
reference of one of three forms:

- a local path (a file or a folder);
- a hub repo id, ``org/name`` (a folder on the Hugging Face hub);
- a file inside a hub repo, ``org/name:path/in/repo.safetensors``.

Hub references resolve through huggingface_hub's cache (``HF_HUB_CACHE``; with ``HF_HUB_OFFLINE=1``
only the cache is read). Every failure a user can cause (a folder without the expected file, a
repo that is neither reachable nor cached, a checkpoint whose keys do not fit the model) becomes a
one-line :class:`ModelLoadError` that names the reference and the file or keys involved.
"""

from __future__ import annotations

import contextlib
import os
import re
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import torch
from torch import Tensor, nn

from didr.errors import ModelLoadError

#: file names that hold a transformers model's weights, in the order from_pretrained tries them
WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin", "pytorch_model.bin.index.json")


#: a hub repo id, org/name
HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def split_file_ref(ref: str) -> tuple[str, str | None]:
    """``org/name:file`` -> (``org/name``, ``file``); any other reference -> (it, None)."""
    repo, sep, file = str(ref).partition(":")
    if sep and file and HUB_ID.match(repo) and not os.path.exists(str(ref)):
        return repo, file
    return str(ref), None


def describe_ref(ref: str) -> str:
    """What kind of reference ``ref`` is, in words, for error messages."""
    repo, file = split_file_ref(ref)
    if file:
        return f"the file {file!r} in hub repo {repo!r}"
    if is_local(ref):
        return f"the local path {ref}"
    return f"{ref!r}, neither a local path nor a repo in the hub cache" if not HUB_ID.match(str(ref)) else f"hub repo {ref!r}"


def is_local(source: str | os.PathLike) -> bool:
    """Whether ``source`` names a path rather than a hub id ("owner/name")."""
    s = str(source)
    if os.path.exists(s) or s.startswith(("/", "./", "../", "~", ".\\")) or s.count("/") > 1:
        return True
    return Path(s).suffix in {".pt", ".pth", ".bin", ".safetensors", ".json"}


def resolve_file(source: str | os.PathLike, filenames: Sequence[str], what: str) -> Path:
    """A local file for ``what``: ``source`` itself, or one of ``filenames`` in the folder or hub repo ``source``."""
    if is_local(source):
        path = Path(source).expanduser()
        if path.is_file():
            return path
        if not path.exists():
            raise ModelLoadError(f"{what}: {path} does not exist (expected a file or a folder holding {' or '.join(filenames)})")
        for name in filenames:
            if (path / name).is_file():
                return path / name
        raise ModelLoadError(f"{what}: no {' or '.join(filenames)} in {path}")
    return _hub_file(str(source), filenames, what)


def resolve_weight_file(ref: str, what: str, filenames: Sequence[str] = ()) -> Path:
    """A local file for a weight reference: a local file, ``org/name:file``, or a folder or hub repo
    holding one of ``filenames``."""
    repo, file = split_file_ref(ref)
    if file:
        return _hub_file(repo, [file], what)
    if is_local(ref):
        path = Path(ref).expanduser()
        if not path.exists():
            raise ModelLoadError(f"{what}: {path} does not exist (a local file; a file in a hub repo is org/name:path/in/repo)")
        if path.is_dir() and not filenames:
            raise ModelLoadError(f"{what}: {path} is a folder; give the weight file in it")
        return resolve_file(path, filenames, what)
    if not HUB_ID.match(str(ref)):
        raise ModelLoadError(f"{what}: {ref} does not exist (a local path), and is not a hub repo id (org/name) or a file in one (org/name:file)")
    if not filenames:
        raise ModelLoadError(f"{what}: {ref!r} names a hub repo, not a file: give org/name:path/in/repo")
    return resolve_file(ref, filenames, what)


def check_folder_ref(ref: str, what: str, marker: str) -> None:
    """Refuse a folder reference that cannot be loaded: a local folder without ``marker``, or a hub
    repo whose ``marker`` is neither reachable nor cached. Reads one small file, writes nothing."""
    repo, file = split_file_ref(ref)
    if file:
        raise ModelLoadError(f"{what}: {ref!r} names a file; give a folder or a hub repo id (org/name)")
    if is_local(ref):
        path = Path(ref).expanduser()
        if not path.is_dir():
            raise ModelLoadError(f"{what}: {path} does not exist (expected a folder holding {marker})")
        if not (path / marker).is_file():
            raise ModelLoadError(f"{what}: no {marker} in {path}")
        return
    if not HUB_ID.match(str(ref)):
        raise ModelLoadError(f"{what}: {ref} does not exist (a local path), and is not a hub repo id (org/name)")
    _hub_file(str(ref), [marker], what)


def local_folder(ref: str, what: str, patterns: Sequence[str] | None = None, ignore: Sequence[str] | None = None) -> Path:
    """A local folder for a folder reference: the path itself, or the hub repo's snapshot in the cache
    (the files matching ``patterns`` and not ``ignore`` fetched first when the hub is reachable)."""
    if is_local(ref):
        return Path(ref).expanduser()
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(str(ref), allow_patterns=list(patterns) if patterns else None, ignore_patterns=list(ignore) if ignore else None))
    except Exception as err:  # offline and not cached, or no such repo
        raise ModelLoadError(f"{what}: hub repo {ref!r} is neither reachable nor cached ({type(err).__name__})") from None


def _hub_file(repo: str, filenames: Sequence[str], what: str) -> Path:
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError, LocalEntryNotFoundError

    errors = []
    for name in filenames:
        try:
            return Path(hf_hub_download(repo, name))
        except Exception as err:  # offline, missing repo or file: all mean "not here"
            errors.append(f"{name}: {type(err).__name__}")
            if not isinstance(err, EntryNotFoundError) or isinstance(err, LocalEntryNotFoundError):
                break  # the hub is unreachable or the repo missing: other file names would only wait again
    raise ModelLoadError(f"{what}: {' or '.join(filenames)} of hub repo {repo!r} is neither reachable nor cached ({'; '.join(errors)}); "
                         "or give a local path")


def load_state_dict(path: Path, what: str) -> dict[str, Tensor]:
    """Tensors of a ``.safetensors`` file or a ``torch.save`` checkpoint, unwrapped from a ``state_dict``/``model`` entry."""
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise ModelLoadError(f"{what}: cannot read {path} as tensors only ({type(err).__name__}: {str(err).splitlines()[0][:200]})") from err
    for key in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict) or not state:
        raise ModelLoadError(f"{what}: {path} holds no state dict")
    # checkpoints saved from DistributedDataParallel prefix every key with "module."
    if all(k.startswith("module.") for k in state):
        state = {k[len("module.") :]: v for k, v in state.items()}
    return state


def load_strict(model: nn.Module, state: dict[str, Tensor], what: str, path: Any, assign: bool = False) -> None:
    """``load_state_dict`` that fails, naming the keys, when any are missing, unexpected or misshapen.

    ``assign``: adopt the checkpoint's tensors, for a model built without memory (:func:`empty_model`).
    """
    own = model.state_dict()
    shape_errors = [f"{k} {tuple(v.shape)} vs {tuple(own[k].shape)}" for k, v in state.items() if k in own and v.shape != own[k].shape]
    missing, unexpected = key_mismatch(own.keys(), state.keys())
    problems = [("missing", missing), ("unexpected", unexpected), ("misshapen", shape_errors)]
    text = "; ".join(f"{len(keys)} {kind} ({', '.join(sorted(keys)[:4])}{', ...' if len(keys) > 4 else ''})" for kind, keys in problems if keys)
    if text:
        raise ModelLoadError(f"{what}: {path} does not fit the model: {text}")
    model.load_state_dict(state, strict=True, assign=assign)


def empty_model(build: Callable[[], nn.Module]) -> nn.Module:
    """Build a model without allocating or initialising its parameters (they come from a checkpoint).

    Random initialisation of a ViT-H on the CPU takes longer than loading its weights.
    """
    from accelerate import init_empty_weights

    with init_empty_weights(include_buffers=False):
        return build()


def key_mismatch(expected: Iterable[str], given: Iterable[str]) -> tuple[set[str], set[str]]:
    """(missing, unexpected) key sets."""
    expected, given = set(expected), set(given)
    return expected - given, given - expected


def from_pretrained(cls: Any, source: str | os.PathLike, what: str, weights: bool = True, **kwargs) -> Any:
    """``cls.from_pretrained(source)``, checking a local folder first so that errors name the missing file.

    ``weights``: whether ``cls`` is a model (needs config.json and a weight file) or a tokenizer.
    """
    if is_local(source):
        path = Path(source).expanduser()
        if not path.is_dir():
            raise ModelLoadError(f"{what}: {path} is not a folder (expected a transformers folder)")
        if weights and not (path / "config.json").is_file():
            raise ModelLoadError(f"{what}: no config.json in {path}")
        if weights and not any((path / f).is_file() for f in WEIGHT_FILES):
            raise ModelLoadError(f"{what}: no weight file in {path} (expected {WEIGHT_FILES[0]} or {WEIGHT_FILES[2]})")
    try:
        if not weights:
            return cls.from_pretrained(str(source), **kwargs)
        with _quiet_transformers():  # its key report lists the unused text tower; missing keys are checked below
            model, info = cls.from_pretrained(str(source), output_loading_info=True, **kwargs)
    except (OSError, ValueError, RuntimeError) as err:
        first = str(err).strip().splitlines()[0][:200] if str(err).strip() else type(err).__name__
        raise ModelLoadError(f"{what}: cannot load {source!r} ({first})") from err
    # unexpected keys are fine (a vision tower read from a full CLIP checkpoint); missing ones are not
    missing = sorted(info.get("missing_keys", ())) + sorted(str(k) for k in info.get("mismatched_keys", ()))
    if missing:
        raise ModelLoadError(f"{what}: {source} lacks or misshapes {len(missing)} weight(s) ({', '.join(missing[:4])})")
    return model


@contextlib.contextmanager
def _quiet_transformers():
    from transformers.utils import logging

    level = logging.get_verbosity()
    logging.set_verbosity_error()
    try:
        yield
    finally:
        logging.set_verbosity(level)


def has_files(source: str | os.PathLike, *names: str) -> bool:
    """Whether the local folder ``source`` holds any of ``names``."""
    return is_local(source) and Path(source).expanduser().is_dir() and any((Path(source).expanduser() / n).is_file() for n in names)


def freeze(module: nn.Module, device: Any = None, dtype: torch.dtype | None = None) -> nn.Module:
    """Evaluation mode (no dropout), no parameter gradients, on ``device``, in ``dtype`` (``None``: float32).

    The floating-point weights are copied into ``dtype`` whatever the checkpoint stores: the
    official scorers build their models in float32 and copy a float16 checkpoint into them, while
    ``load_state_dict(assign=True)`` and transformers 5's ``from_pretrained`` keep the file's dtype.
    """
    dtype = torch.float32 if dtype is None else dtype
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise ModelLoadError(f"a reward model's dtype must be a floating-point torch dtype, got {dtype!r}")
    module.eval().requires_grad_(False)
    return module.to(device=device, dtype=dtype)
