"""What a checkpoint holds of a run: the roles' weights, the optimisers' states, and back.

Tensors go into the checkpoint's safetensors files under ``<role>.<key>`` (weights) and
``optim.<role>.<parameter>.<state>`` (optimiser states, by parameter name, so that they do not
depend on how the parameters are split over processes); everything else an optimiser, a schedule
or a grad scaler holds is plain numbers, kept in ``state.json``. Restoring reads, for each tensor
the run holds, exactly what this process holds of it: the whole tensor, or its rows when it is
sharded (:mod:`didr.train.shard_io`), whatever the number of processes that saved it.
"""

from __future__ import annotations

from typing import Any

from torch import Tensor, nn

from didr.errors import CheckpointError
from didr.train.shard_io import RowReader


def trainable_names(module: nn.Module) -> list[str]:
    """The names of the parameters an optimiser over ``module`` holds, in its order."""
    return [n for n, p in module.named_parameters() if p.requires_grad]


def role_tensors(roles: dict[str, nn.Module]) -> dict[str, Tensor]:
    return {f"{role}.{k}": v for role, module in roles.items() for k, v in module.state_dict().items()}


def optimizer_entries(role: str, opt, module: nn.Module) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """An optimiser's state: its tensors by parameter name, and the rest as JSON-able values."""
    names, saved = trainable_names(module), opt.state_dict()
    tensors, state = {}, {}
    for i, entry in saved["state"].items():
        name = names[i]
        state[name] = {"tensors": [], "values": {}}
        for k, v in entry.items():
            if isinstance(v, Tensor):
                tensors[f"optim.{role}.{name}.{k}"] = v
                state[name]["tensors"].append(k)
            else:
                state[name]["values"][k] = v
    return tensors, {"names": names, "param_groups": saved["param_groups"], "state": state}


def load_role(role: str, module: nn.Module, reader: RowReader, where) -> None:
    """``module``'s weights from the checkpoint's ``<role>.*`` tensors."""
    current = module.state_dict()
    saved = {k[len(role) + 1 :] for k in reader.keys() if k.startswith(role + ".")}
    if saved != set(current):
        extra, missing = sorted(saved - set(current)), sorted(set(current) - saved)
        what = f"missing {missing[0]}" if missing else f"unexpected {extra[0]}"
        raise CheckpointError(f"cannot resume from {where}: its {role} does not fit this model ({what})")
    for k, v in current.items():
        if reader.shape(f"{role}.{k}") != list(v.shape):
            raise CheckpointError(f"cannot resume from {where}: its {role} does not fit this model ({k}: shape "
                                  f"{reader.shape(f'{role}.{k}')}, here {list(v.shape)})")
    module.load_state_dict({k: reader.read(f"{role}.{k}", like=v) for k, v in current.items()})


def load_optimizer(role: str, opt, module: nn.Module, saved: dict[str, Any], reader: RowReader, where) -> None:
    """An optimiser's state from :func:`optimizer_entries`' record and the checkpoint's tensors."""
    names = trainable_names(module)
    if saved.get("names") != names:
        raise CheckpointError(f"cannot resume from {where}: the {role}'s optimiser holds other parameters than this run trains")
    params = dict(module.named_parameters())
    state = {}
    for i, name in enumerate(names):
        entry = saved["state"].get(name)
        if entry is None:
            continue
        state[i] = dict(entry["values"])
        for k in entry["tensors"]:
            key = f"optim.{role}.{name}.{k}"
            like = params[name] if reader.shape(key) == list(params[name].shape) else None
            state[i][k] = reader.read(key, like)
    groups = [{**g, "betas": tuple(g["betas"])} if "betas" in g else g for g in saved["param_groups"]]
    opt.load_state_dict({"state": state, "param_groups": groups})
