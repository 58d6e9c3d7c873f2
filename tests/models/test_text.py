"""Prompt sets, the on-disk embedding cache and conditioning batches."""

import json

import pytest
import torch

from didr.errors import ConfigError
from didr.models.denoiser import concat_cond
from didr.models.text import PromptSet, encode_cached, load_prompts


def test_load_prompts_from_text_and_jsonl(tmp_path):
    (tmp_path / "p.txt").write_text("a cat\n\n  a dog  \n")
    assert load_prompts(tmp_path / "p.txt") == ["a cat", "a dog"]
    rows = [{"prompt": "a cat"}, {"caption": "a dog", "id": 3}, {"text": "a cup"}]
    (tmp_path / "p.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    assert load_prompts(tmp_path / "p.jsonl") == ["a cat", "a dog", "a cup"]
    (tmp_path / "bad.jsonl").write_text('{"prompt": "ok"}\n{"title": "no prompt"}\n')
    with pytest.raises(ConfigError, match="bad.jsonl:2: no string field prompt / caption / text"):
        load_prompts(tmp_path / "bad.jsonl")
    with pytest.raises(ConfigError, match="prompt file not found"):
        load_prompts(tmp_path / "missing.txt")


class CountingEncoder:
    def __init__(self):
        self.calls = 0

    def __call__(self, prompts):
        self.calls += 1
        return [{"cap_feats": torch.full((len(p), 4), float(len(p)))} for p in prompts]


def test_embeddings_are_encoded_once_and_cached(tmp_path):
    enc = CountingEncoder()
    first = encode_cached(enc, "zimage:x", ["a", "bbb"], tmp_path)
    again = encode_cached(enc, "zimage:x", ["a", "bbb"], tmp_path)
    assert enc.calls == 1
    assert [r["cap_feats"].shape for r in again] == [(1, 4), (3, 4)]
    torch.testing.assert_close(again[1]["cap_feats"], first[1]["cap_feats"])
    encode_cached(enc, "zimage:other-encoder", ["a", "bbb"], tmp_path)
    assert enc.calls == 2  # another encoder is another cache entry


def test_prompt_set_batches_and_null_condition():
    rows = [{"encoder_hidden_states": torch.full((3, 2), float(i)), "text_embeds": torch.full((2,), float(i))} for i in range(3)]
    null = {"encoder_hidden_states": torch.zeros(3, 2), "text_embeds": torch.zeros(2)}
    ps = PromptSet(["p0", "p1", "p2"], rows, null, {"time_ids": torch.arange(6.0)})
    cond = ps.batch([2, 0])
    assert cond["prompts"] == ["p2", "p0"]
    assert cond["encoder_hidden_states"].shape == (2, 3, 2) and cond["encoder_hidden_states"][0, 0, 0] == 2
    assert cond["time_ids"].shape == (2, 6)
    both = concat_cond(ps.null_cond(cond), cond)  # what GuidedDenoiser (M4) batches
    assert both["prompts"] == ["", "", "p2", "p0"] and both["text_embeds"][:2].abs().sum() == 0
