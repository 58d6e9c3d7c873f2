"""The protocol block: the same weights anywhere give the same entry, other weights another; two
protocols that differ are named field by field."""

import shutil

from didr.eval.protocol import build_protocol, mismatches, reward_entry, reward_weights
from didr.testing.tiny import save_tiny_clip


def test_reward_weights_follow_the_bytes_not_the_path(tmp_path):
    from didr.rewards.registry import load_reward

    save_tiny_clip(tmp_path / "a")
    shutil.copytree(tmp_path / "a", tmp_path / "b")
    entry = reward_entry(f"pickscore:{tmp_path / 'a'}", load_reward(f"pickscore:{tmp_path / 'a'}"))
    assert entry == reward_entry(f"pickscore:{tmp_path / 'b'}", load_reward(f"pickscore:{tmp_path / 'b'}"))
    weights = tmp_path / "b" / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 1
    weights.write_bytes(bytes(data))
    assert reward_weights(f"pickscore:{tmp_path / 'b'}") != entry["weights"]


def test_mismatches_name_each_differing_field_and_ignore_the_generators():
    common = dict(prompts={"count": 3, "sha256": "x"}, prompt_source="p.txt", resolution=[[16, 16]], dtype="float32",
                  rewards={"PickScore": {"weights": {"m": "1"}}}, reward_specs=["pickscore"], features=None)
    a = build_protocol(seeds=[0, 1], generators={"one": {}}, **common)
    b = build_protocol(seeds=[0, 1], generators={"two": {}}, **{**common, "prompt_source": "elsewhere/p.txt"})
    assert mismatches(a, b) == []
    c = build_protocol(seeds=[0, 1, 2], generators={}, **{**common, "rewards": {"PickScore": {"weights": {"m": "2"}}}})
    assert [m.split(":")[0] for m in mismatches(a, c)] == ["seeds", "rewards"]
