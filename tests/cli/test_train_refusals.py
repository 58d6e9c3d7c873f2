"""``didr train`` on the text-to-image path refuses bad input the way the toy does: exit status 2,
one line that names the field and the problem, and OUT left as it was (no config, no tiny models,
no text cache), even for refusals that need the models loaded."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from didr.cli import main
from tests.helpers import ROOT, didr_cmd, subprocess_env

TINY_SDXL = str(ROOT / "configs" / "tiny-sdxl.yaml")


def bad_prompts(tmp_path: Path) -> str:
    path = tmp_path / "latin1.txt"
    path.write_bytes("caf\xe9 au lait\n".encode("latin-1"))
    return str(path)


CASES = {
    "lora targets": (lambda tmp: ["backbone.lora_targets=[to_nowhere]"], "backbone.lora_targets: to_nowhere name no module of the UNet2DConditionModel"),
    "missing local weights": (lambda tmp: [f"backbone.generator_weights={tmp}/dmd2.bin"], "dmd2.bin does not exist (a local file"),
    "file in an uncached hub repo": (lambda tmp: ["backbone.generator_weights=nobody/none:unet.safetensors"],
                                     "unet.safetensors of hub repo 'nobody/none' is neither reachable nor cached"),
    "reward not cached": (lambda tmp: ["backbone.reward=pickscore:nobody/no-reward"], "reward pickscore: config.json of hub repo 'nobody/no-reward'"),
    "prompt file missing": (lambda tmp: ["backbone.prompt_list=[]", f"backbone.prompts={tmp}/none.txt"], "prompt file not found"),
    "prompt file not utf-8": (lambda tmp: ["backbone.prompt_list=[]", f"backbone.prompts={bad_prompts(tmp)}"], "not UTF-8 text"),
    "two prompt sources": (lambda tmp: ["backbone.prompts=p.txt"], "backbone.prompt_list: and backbone.prompts='p.txt' both name the prompts"),
    "negative prompt on flux": (lambda tmp: ["backbone.kind=flux", "backbone.negative_prompt=blurry"], "backbone.negative_prompt: flux is guidance-distilled"),
    "prediction type on a flow": (lambda tmp: ["backbone.kind=zimage", "backbone.generator_prediction_type=sample"], "networks predict the flow velocity"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_a_refusal_is_one_line_and_leaves_out_untouched(case, tmp_path, capsys):
    overrides, fragment = CASES[case]
    out = tmp_path / "run"
    args = [a for s in overrides(tmp_path) for a in ("--set", s)]
    assert main(["train", TINY_SDXL, "--out", str(out), *args]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("didr train: error: ") and fragment in err[0], err
    assert not out.exists()


def test_the_terminal_shows_the_one_line_and_no_library_noise(tmp_path):
    """As a process, after the tiny models were built and loaded (where transformers, diffusers and
    peft would print warnings and progress bars): the whole output is the one line."""
    out = tmp_path / "run"
    proc = subprocess.run(didr_cmd("train", TINY_SDXL, "--out", str(out), "--set", "backbone.lora_targets=[to_nowhere]"), cwd=ROOT,
                          env=subprocess_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.strip().splitlines() == [proc.stderr.strip()] and "lora_targets" in proc.stderr, proc.stderr
    assert not out.exists()
