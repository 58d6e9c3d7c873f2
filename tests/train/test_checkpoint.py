"""Checkpoint files: atomic layout, verification, fallback past damaged ones, pruning, RNG state."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest
import torch

from didr.errors import CheckpointError
from didr.train import checkpoint as ckpt
from didr.train.streams import rng_state, set_rng_state

TENSORS = "tensors-rank00000.safetensors"


def save(root, step, value=1.0, keep=5):
    tmp = ckpt.begin(root, step)
    ckpt.write_rng(tmp, 0, rng_state())
    layout = ckpt.write_tensors(tmp, 0, {"generator.w": torch.full((4,), value), "optim.generator.w.exp_avg": torch.zeros(4)})
    state = {"world_size": 1, "layout": layout, "optim": {"generator": {"param_groups": [{"lr": 0.1}]}}, "config": {"train": {}, "run": None}}
    return ckpt.commit(tmp, root, step, state, keep)


def test_round_trip_and_layout(tmp_path):
    path = save(tmp_path, 7, value=3.0)
    assert path.name == "step-00000007"
    assert sorted(p.name for p in path.iterdir()) == ["rng-slot00000.pt", "state.json", TENSORS]
    assert not list(tmp_path.glob(".*"))  # no temporary directory left behind
    loaded = ckpt.load_latest(tmp_path)
    assert loaded.step == 7 and torch.equal(loaded.tensors.read("generator.w"), torch.full((4,), 3.0))
    assert loaded.tensors.keys() == {"generator.w", "optim.generator.w.exp_avg"}
    assert loaded.state["optim"]["generator"]["param_groups"][0]["lr"] == 0.1 and loaded.rng[0] is not None
    # nothing is unpickled: safetensors, JSON, and the RNG state loads with weights_only
    torch.load(path / "rng-slot00000.pt", weights_only=True)
    assert set(json.loads((path / "state.json").read_text())["files"]) == {TENSORS, "rng-slot00000.pt"}


def test_keeps_the_last_n(tmp_path):
    for step in (1, 2, 3, 4):
        save(tmp_path, step, keep=2)
    assert [p.name for p in ckpt.list_checkpoints(tmp_path)] == ["step-00000004", "step-00000003"]


def _truncate(path):
    data = (path / TENSORS).read_bytes()
    (path / TENSORS).write_bytes(data[: len(data) // 2])


def _flip_byte(path):
    f = path / TENSORS
    data = bytearray(f.read_bytes())
    data[len(data) // 2] ^= 0xFF
    f.write_bytes(bytes(data))


def _garbage_state(path):
    (path / "state.json").write_text("{not json")


def _no_state(path):
    (path / "state.json").unlink()


def _missing_rng(path):
    (path / "rng-slot00000.pt").unlink()


def _foreign_state(path):
    (path / "state.json").write_text(json.dumps({"step": 2}))


@pytest.mark.parametrize(
    "damage, reason",
    [(_truncate, "truncated"), (_flip_byte, "corrupt"), (_garbage_state, "corrupt"), (_no_state, "incomplete"), (_missing_rng, "missing"),
     (_foreign_state, "not a didr checkpoint")],
)
def test_a_damaged_latest_is_skipped_with_a_warning(tmp_path, damage, reason):
    save(tmp_path, 1, value=1.0)
    damage(save(tmp_path, 2, value=2.0))
    with pytest.warns(UserWarning, match=f"skipping checkpoint: .*step-00000002.*{reason}"):
        loaded = ckpt.load_latest(tmp_path)
    assert loaded.step == 1 and torch.equal(loaded.tensors.read("generator.w"), torch.full((4,), 1.0))


def test_all_damaged_is_refused(tmp_path):
    _truncate(save(tmp_path, 1))
    with pytest.warns(UserWarning):
        assert ckpt.load_latest(tmp_path) is None
    with pytest.raises(CheckpointError, match="none of the 1 checkpoint"):
        ckpt.require_usable(tmp_path)
    ckpt.require_usable(tmp_path / "empty")  # no checkpoints at all: nothing to refuse


def test_an_interrupted_save_is_ignored_then_cleaned(tmp_path):
    save(tmp_path, 1)
    stale = ckpt.begin(tmp_path, 2)  # a save killed before its rename
    (stale / TENSORS).write_bytes(b"partial")
    assert ckpt.load_latest(tmp_path).step == 1
    save(tmp_path, 3)
    assert not stale.exists()


def test_rng_state_round_trip(tmp_path):
    torch.manual_seed(1), np.random.seed(2), random.seed(3)
    torch.save(rng_state(), tmp_path / "rng.pt")
    expected = (torch.rand(3), np.random.rand(3), random.random())
    torch.manual_seed(9), np.random.seed(9), random.seed(9)
    set_rng_state(torch.load(tmp_path / "rng.pt", weights_only=True))
    got = (torch.rand(3), np.random.rand(3), random.random())
    assert torch.equal(got[0], expected[0]) and np.array_equal(got[1], expected[1]) and got[2] == expected[2]


def test_atomic_export_replaces_in_one_step(tmp_path):
    ckpt.export_generator(tmp_path, {"w": torch.zeros(2)}, {"step": 1})
    ckpt.export_generator(tmp_path, {"w": torch.ones(2)}, {"step": 2})
    from safetensors.torch import load_file

    assert torch.equal(load_file(str(tmp_path / "export" / "generator.safetensors"))["w"], torch.ones(2))
    assert json.loads((tmp_path / "export" / "generator.json").read_text())["step"] == 2
    assert sorted(p.name for p in (tmp_path / "export").iterdir()) == ["generator.json", "generator.safetensors"]


def test_tied_weights_are_saved(tmp_path):
    w = torch.ones(3)
    ckpt.atomic_save_tensors({"a": w, "b": w}, tmp_path / "t.safetensors")
