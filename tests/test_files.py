"""Files that are never half-written, and the digests that name what made them."""

import torch
from safetensors.torch import load_file

from didr.files import atomic_save_tensors, atomic_write_text, digest, sha256_file


def test_digest_is_stable_and_ignores_key_order():
    assert digest({"a": 1, "b": [2, 3]}) == digest({"b": [2, 3], "a": 1})
    assert digest({"a": 1}) != digest({"a": 2}) and len(digest({})) == 12


def test_atomic_writes_leave_the_file_and_no_temporary(tmp_path):
    atomic_write_text("one", tmp_path / "a.txt")
    atomic_write_text("two", tmp_path / "a.txt")
    assert (tmp_path / "a.txt").read_text() == "two"
    w = torch.randn(3, 4)
    atomic_save_tensors({"w": w, "tied": w}, tmp_path / "t.safetensors", metadata={"key": "k"})  # shared storage is cloned
    loaded = load_file(tmp_path / "t.safetensors")
    assert torch.equal(loaded["w"], w) and torch.equal(loaded["tied"], w)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.txt", "t.safetensors"]
    assert len(sha256_file(tmp_path / "a.txt")) == 64
