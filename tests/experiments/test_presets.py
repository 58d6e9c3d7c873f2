"""The text-to-image presets run as written: every weight they name is a hub reference that resolves
through huggingface_hub's cache, and a run whose models are all hub references trains offline from
a filled cache, through the stock ``from_pretrained`` loaders."""

from __future__ import annotations

import json
import subprocess

import pytest
import yaml

from didr import config as cfgio
from didr.errors import ModelLoadError
from didr.experiments.config import RunConfig
from didr.experiments.text_to_image import check_before_writing
from didr.hub import HUB_ID
from didr.models.backbones import BACKBONES
from tests.helpers import ROOT, didr_cmd

CONFIGS = ROOT / "configs"
PRESETS = sorted(p.stem for p in CONFIGS.glob("*.yaml")
                 if not p.stem.startswith("tiny-") and yaml.safe_load(p.read_text()).get("experiment") == "text-to-image")


def expected_files(backbone: dict) -> dict[str, dict[str, str]]:
    """What each reference of a preset's backbone section needs in the cache: a pipeline folder's
    model_index.json, a file reference's file, a reward model's config.json."""
    repos: dict[str, dict[str, str]] = {}
    for field in ("pretrained", "generator"):
        if backbone.get(field):
            repos.setdefault(backbone[field], {})["model_index.json"] = "{}"
    for field in ("generator_weights", "generator_lora"):
        if backbone.get(field):
            repo, file = backbone[field].split(":")
            repos.setdefault(repo, {})[file] = ""
    name, _, source = backbone["reward"].partition(":")
    assert name == "pickscore", "extend expected_files for this reward"
    repos.setdefault(source, {})["config.json"] = "{}"
    return repos


def test_every_backbone_kind_has_a_preset():
    kinds = {yaml.safe_load((CONFIGS / f"{p}.yaml").read_text())["backbone"]["kind"] for p in PRESETS}
    assert kinds == set(BACKBONES)


@pytest.mark.parametrize("preset", PRESETS)
def test_every_weight_reference_of_a_preset_resolves_from_the_hub_cache(preset, hub_cache):
    path = CONFIGS / f"{preset}.yaml"
    cfg = cfgio.load(RunConfig, path)  # the preset validates as written
    repos = expected_files(yaml.safe_load(path.read_text())["backbone"])
    assert all(HUB_ID.match(repo) for repo in repos), repos  # hub ids, no placeholders
    with pytest.raises(ModelLoadError, match="neither reachable nor cached"):
        check_before_writing(cfg.backbone)  # the empty cache: refused, by name
    for repo, files in repos.items():
        hub_cache.add(repo, files)
    check_before_writing(cfg.backbone)


def test_a_run_whose_models_are_hub_references_trains_offline_from_the_cache(tmp_path, hub_cache):
    """The tiny SDXL pipeline as hub repo ``tiny-org/sdxl`` and a one-step UNet state dict as the file
    ``tiny-org/onestep:unet.safetensors``: didr train loads both through the cache and exports."""
    from safetensors.torch import save_file

    from didr.testing.tiny import save_tiny_sdxl, tiny_sdxl_unet

    hub_cache.add_folder("tiny-org/sdxl", save_tiny_sdxl(tmp_path / "sdxl"))
    save_file(tiny_sdxl_unet().state_dict(), tmp_path / "unet.safetensors")
    hub_cache.add("tiny-org/onestep", {"unet.safetensors": (tmp_path / "unet.safetensors").read_bytes()})
    out = tmp_path / "run"
    sets = ["backbone.tiny=false", "backbone.pretrained=tiny-org/sdxl", "backbone.generator_weights=tiny-org/onestep:unet.safetensors",
            "train.steps=1"]
    proc = subprocess.run(didr_cmd("train", str(CONFIGS / "tiny-sdxl.yaml"), "--out", str(out), *(a for s in sets for a in ("--set", s))),
                          cwd=ROOT, env=hub_cache.env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert all(line.startswith("[didr ") for line in proc.stderr.splitlines()), proc.stderr  # didr's progress, no library noise
    assert json.loads((out / "export" / "sampling.json").read_text())["base"] == "tiny-org/sdxl"
    assert (out / "export" / "model_index.json").is_file() and (out / "export" / "vae").is_dir()
