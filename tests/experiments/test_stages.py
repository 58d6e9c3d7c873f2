"""The stage cache: reused for the same key, rebuilt for another, one atomic file, main process only."""

import torch
from torch import nn

from didr.experiments.stages import cached_module, cached_tensors, cached_timed, is_cached, save_stage, stage_metadata
from didr.files import digest


def test_same_key_reuses_other_key_rebuilds(tmp_path):
    path = tmp_path / "stages" / "pool.safetensors"
    calls = []

    def build():
        calls.append(1)
        return {"x": torch.full((3,), float(len(calls)))}

    first = cached_tensors(path, digest({"a": 1}), build)
    again = cached_tensors(path, digest({"a": 1}), build)
    assert len(calls) == 1 and torch.equal(first["x"], again["x"])
    other = cached_tensors(path, digest({"a": 2}), build)
    assert len(calls) == 2 and other["x"][0] == 2.0
    assert stage_metadata(path)["key"] == digest({"a": 2})
    assert [p.name for p in path.parent.iterdir()] == ["pool.safetensors"]  # no temporary or sidecar file


def test_module_weights_round_trip(tmp_path):
    path = tmp_path / "net.safetensors"
    torch.manual_seed(0)
    trained = cached_module(path, "k", nn.Linear(2, 2), lambda: None)
    fresh = cached_module(path, "k", nn.Linear(2, 2), lambda: (_ for _ in ()).throw(AssertionError("rebuilt")))
    assert all(torch.equal(a, b) for a, b in zip(trained.state_dict().values(), fresh.state_dict().values()))


def test_only_the_main_process_writes(tmp_path, monkeypatch):
    monkeypatch.setenv("RANK", "1")
    save_stage(tmp_path / "s.safetensors", "k", {"x": torch.zeros(1)}, seconds="1.5")
    assert not (tmp_path / "s.safetensors").exists()
    monkeypatch.setenv("RANK", "0")
    save_stage(tmp_path / "s.safetensors", "k", {"x": torch.zeros(1)}, seconds="1.5")
    assert stage_metadata(tmp_path / "s.safetensors") == {"key": "k", "seconds": "1.5"}


def test_a_timed_stage_keeps_the_seconds_its_building_took(tmp_path):
    import time

    path = tmp_path / "run.safetensors"
    built, seconds = cached_timed(path, "k", lambda: (time.sleep(0.05), {"x": torch.ones(2)})[1])
    assert seconds >= 0.05 and is_cached(path, "k") and not is_cached(path, "other") and not is_cached(tmp_path / "none", "k")
    again, recorded = cached_timed(path, "k", lambda: (_ for _ in ()).throw(AssertionError("rebuilt")))
    assert recorded == seconds and torch.equal(again["x"], built["x"])
