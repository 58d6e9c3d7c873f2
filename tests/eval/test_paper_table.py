"""The paper's table, tiny: the README's commands with tiny random models. A teacher at many steps,
a released one-step UNet swapped into the base (as DMD2 ships), and a didr run, scored with
PickScore, ImageReward, HPSv2.1 and the aesthetic predictor on the same prompts and seeds."""

from __future__ import annotations

import json

from safetensors.torch import save_file

from didr.cli import main
from didr.testing.reward_models import save_aesthetic_folder, save_clip_folder, save_hps_folder, save_image_reward_folder
from didr.testing.tiny import tiny_sdxl_unet
from tests.helpers import ROOT


def test_the_papers_table_from_tiny_models(tmp_path):
    run = tmp_path / "didr-run"
    assert main(["train", str(ROOT / "configs" / "tiny-sdxl.yaml"), "--out", str(run), "--set", "train.steps=1"]) == 0
    base = run / "tiny" / "sdxl"
    save_file(tiny_sdxl_unet().state_dict(), tmp_path / "onestep_unet.safetensors")  # a released one-step UNet, in its file
    rewards = {"pickscore": save_clip_folder(tmp_path / "pickscore"), "imagereward": save_image_reward_folder(tmp_path / "ir")[0],
               "hpsv2": save_hps_folder(tmp_path / "hps")[0], "aesthetic": save_aesthetic_folder(tmp_path / "aesthetic")}
    out = tmp_path / "table"
    args = ["eval", f"{base}?steps=8&guidance=5&name=teacher-8",
            f"{base}?weights={tmp_path / 'onestep_unet.safetensors'}&scheduler=LCMScheduler&timesteps=399&guidance=0&name=one-step",
            str(run), "--resolution", "16", "--seeds", "2", "--limit", "4", "--base", "teacher-8", "--out", str(out),
            *(a for name, folder in rewards.items() for a in ("--reward", f"{name}:{folder}"))]
    assert main(args) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert list(metrics["generators"]) == ["teacher-8", "one-step", run.name]
    assert [r["model"] for r in metrics["protocol"]["rewards"].values()] == ["pickscore", "imagereward", "hpsv2", "aesthetic"]
    assert metrics["protocol"]["generators"]["one-step"]["scheduler"] == "LCMScheduler"
    assert metrics["protocol"]["generators"]["one-step"]["call"]["timesteps"] == [399]
    table = (out / "report.md").read_text().split("## Against")[0]
    rows = [line for line in table.splitlines() if line.startswith("| ") and not line.startswith("| generator")]
    assert [r.split("|")[1].strip() for r in rows] == ["teacher-8", "one-step", run.name]
    assert all(r.count("[") == 4 + (r.split("|")[1].strip() != "teacher-8") for r in rows)  # 4 rewards with intervals (+ drift)
    assert [r.split("|")[2].strip() for r in rows] == ["8", "1", "1"]  # steps
