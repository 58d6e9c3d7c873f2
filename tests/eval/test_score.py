"""``didr score`` and :func:`score_images`: prompts from every source, outputs, summary, user errors."""

from __future__ import annotations

import csv
import json
import re

import numpy as np
import pytest
import torch
from PIL import Image

from didr.cli import main
from didr.errors import ConfigError, RewardError
from didr.eval.score import find_images, score_images
from didr.rewards.base import Reward, prompt_list

BRIGHTNESS = {"a.png": 0, "b.png": 255, "c.jpg": 128}  # c.jpg is a different size: its own batch
PROMPTS = {"a.png": "a cat", "b.png": "a red dog", "c.jpg": "sky"}


def brightness(images, prompts=None):
    """Mean pixel value in [-1, 1]."""
    return images.flatten(1).mean(1)


def prompt_length(images, prompts):
    """Characters in each prompt: shows which prompt reached which image."""
    return torch.tensor([float(len(p)) for p in prompts])


@pytest.fixture
def folder(tmp_path):
    d = tmp_path / "samples"
    d.mkdir()
    for name, value in BRIGHTNESS.items():
        size = (24, 16) if name.endswith(".jpg") else (16, 16)
        Image.fromarray(np.full((*size, 3), value, dtype=np.uint8)).save(d / name, quality=100)
    (d / "notes.md").write_text("not an image")
    return d


def expected_brightness(name):
    return BRIGHTNESS[name] / 127.5 - 1


def test_scores_every_image_in_sorted_order(folder):
    result = score_images(folder, ["py:tests.eval.test_score:brightness", "py:tests.eval.test_score:prompt_length"], prompts=list(PROMPTS.values()), batch_size=1)
    assert result.files == ["a.png", "b.png", "c.jpg"]
    assert result.scores["brightness"] == pytest.approx([expected_brightness(f) for f in result.files], abs=0.01)
    assert result.scores["prompt_length"] == [5.0, 9.0, 3.0]
    summary = result.summary()["prompt_length"]
    assert (summary["mean"], summary["min"], summary["max"], summary["n"]) == (pytest.approx(17 / 3), 3.0, 9.0, 3)


@pytest.mark.parametrize("kind", ["txt", "json-dict", "json-list", "jsonl", "csv", "sidecar", "single"])
def test_prompt_sources(folder, tmp_path, kind):
    names = sorted(PROMPTS)
    kwargs = {}
    if kind == "txt":
        (tmp_path / "p.txt").write_text("\n".join(PROMPTS[n] for n in names) + "\n\n")
        kwargs["prompts"] = tmp_path / "p.txt"
    elif kind == "json-dict":
        (tmp_path / "p.json").write_text(json.dumps({n.split(".")[0]: PROMPTS[n] for n in reversed(names)}))
        kwargs["prompts"] = tmp_path / "p.json"
    elif kind == "json-list":
        (tmp_path / "p.json").write_text(json.dumps([{"prompt": PROMPTS[n]} for n in names]))
        kwargs["prompts"] = tmp_path / "p.json"
    elif kind == "jsonl":
        (tmp_path / "p.jsonl").write_text("\n".join(json.dumps({"file": n, "prompt": PROMPTS[n]}) for n in reversed(names)))
        kwargs["prompts"] = tmp_path / "p.jsonl"
    elif kind == "csv":
        (tmp_path / "p.csv").write_text("file,prompt\n" + "".join(f'{n},"{PROMPTS[n]}"\n' for n in reversed(names)))
        kwargs["prompts"] = tmp_path / "p.csv"
    elif kind == "sidecar":
        for n in names:
            (folder / n).with_suffix(".txt").write_text(PROMPTS[n] + "\n")
    else:
        kwargs["prompt"] = "one prompt"
    result = score_images(folder, "py:tests.eval.test_score:prompt_length", **kwargs)
    want = [10.0] * 3 if kind == "single" else [float(len(PROMPTS[n])) for n in names]
    assert result.scores["prompt_length"] == want


def test_csv_and_json_outputs(folder, tmp_path):
    result = score_images(folder, {"bright": brightness, "len": prompt_length}, prompt="xy")
    rows = list(csv.DictReader(result.save(tmp_path / "out" / "s.csv").open()))
    assert [r["file"] for r in rows] == ["a.png", "b.png", "c.jpg"] and rows[1]["prompt"] == "xy"
    assert float(rows[1]["bright"]) == pytest.approx(1.0, abs=0.01)
    data = json.loads(result.save(tmp_path / "s.json").read_text())
    assert data["summary"]["len"]["mean"] == 2.0 and len(data["images"]) == 3
    assert data["rewards"]["bright"]["differentiable"] is True
    with pytest.raises(ConfigError, match=r"\.csv or \.json"):
        result.save(tmp_path / "s.txt")


def test_same_reward_twice_gets_distinct_names(folder):
    result = score_images(folder, ["py:tests.eval.test_score:brightness", "py:tests.eval.test_score:brightness"])
    assert list(result.scores) == ["brightness", "brightness#2"]


def test_text_reward_without_prompts_names_the_reward(folder):
    class Texty(Reward):
        name = "texty"

        def forward(self, images, prompts=None):
            return torch.zeros(len(prompt_list(prompts, images.shape[0], self.name)))

    with pytest.raises(RewardError, match="'texty' needs text prompts"):
        score_images(folder, [Texty()])


def test_tiny_aesthetic_model_scores_through_the_cli(folder, tmp_path, capsys):
    from transformers import CLIPConfig, CLIPModel

    from didr.rewards.heads import MLPHead

    model_dir = tmp_path / "aesthetic"
    torch.manual_seed(0)
    config = CLIPConfig(text_config=dict(vocab_size=50, hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2),
                        vision_config=dict(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                                           image_size=32, patch_size=16), projection_dim=8)
    CLIPModel(config).save_pretrained(model_dir)
    torch.save(MLPHead(8).state_dict(), model_dir / "sac+logos+ava1-l14-linearMSE.pth")
    out = tmp_path / "scores.json"
    code = main(["score", str(folder), "-r", f"aesthetic:{model_dir}", "-r", "py:tests.eval.test_score:brightness", "-o", str(out), "--device", "cpu"])
    assert code == 0
    printed = capsys.readouterr().out
    assert "aesthetic" in printed and "brightness" in printed and "(3 images)" in printed
    data = json.loads(out.read_text())
    assert len(data["images"]) == 3 and np.isfinite([r["aesthetic"] for r in data["images"]]).all()
    assert data["rewards"]["aesthetic"]["typical_range"] == [4.0, 7.0]


@pytest.mark.parametrize(
    "args, message",
    [
        (["{missing}", "-r", "toy:step"], "image folder .*missing does not exist"),
        (["{empty}", "-r", "toy:step"], "no images"),
        (["{folder}", "-r", "toy:step", "--prompts", "{blank}"], "prompt file .*blank.txt is empty"),
        (["{folder}", "-r", "toy:step", "--prompts", "{two}"], "2 prompts for 3 images"),
        (["{folder}", "-r", "pixscore"], "unknown reward 'pixscore'"),
        (["{folder}", "-r", "aesthetic:{missing}"], r"does not exist.*sac\+logos"),
    ],
)
def test_user_errors_exit_2_with_one_line(folder, tmp_path, capsys, args, message):
    (tmp_path / "empty").mkdir()
    (tmp_path / "blank.txt").write_text("\n \n")
    (tmp_path / "two.txt").write_text("a\nb\n")
    paths = dict(folder=folder, missing=tmp_path / "missing", empty=tmp_path / "empty", blank=tmp_path / "blank.txt", two=tmp_path / "two.txt")
    code = main(["score", *(a.format(**paths) for a in args)])
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert re.search(message, err), err


def test_find_images_ignores_other_files(folder):
    assert [p.name for p in find_images(folder)] == ["a.png", "b.png", "c.jpg"]
