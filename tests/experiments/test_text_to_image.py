"""End to end on tiny random pipelines: `didr train` runs DIDR steps, the export loads in stock
diffusers and its pipelines sample from it, and mismatches stop the run before any step."""

import json
from pathlib import Path

import pytest
import torch
import yaml

from didr.cli import main
from didr.errors import ConfigError, ModelLoadError
from didr.models.backbones import BACKBONES

diffusers = pytest.importorskip("diffusers")
CONFIGS = Path(__file__).resolve().parents[2] / "configs"


PROMPTS = ("a photo of a cat", "a red cup of coffee")
RUNS: dict[str, Path] = {}


def tiny_run(kind: str, tmp_path_factory, *sets: str) -> Path:
    """``didr train configs/tiny-<kind>.yaml`` once per module (and per set of overrides)."""
    key = " ".join((kind, *sets))
    if key not in RUNS:
        out = tmp_path_factory.mktemp(kind)
        assert main(["train", str(CONFIGS / f"tiny-{kind}.yaml"), "--out", str(out), *(a for s in sets for a in ("--set", s))]) == 0
        RUNS[key] = out
    return RUNS[key]


@pytest.fixture(scope="module")
def sdxl_run(tmp_path_factory):
    return tiny_run("sdxl", tmp_path_factory)


@pytest.fixture(scope="module")
def zimage_run(tmp_path_factory):
    return tiny_run("zimage", tmp_path_factory, "backbone.generator_steps=2")


def stock_images(run: Path, seed: int = 7) -> torch.Tensor:
    """The exported pipeline, as its model card calls it: ``from_pretrained(OUT/export)(prompt, generator, **call)``."""
    info = json.loads((run / "export" / "sampling.json").read_text())
    pipe = diffusers.DiffusionPipeline.from_pretrained(run / "export")
    pipe.set_progress_bar_config(disable=True)
    return pipe(prompt=list(PROMPTS), generator=torch.Generator().manual_seed(seed), output_type="pt", **info["call"]).images


def didr_images(run: Path, seed: int = 7) -> torch.Tensor:
    from didr.models.sample import sample_images

    return ((sample_images(run, list(PROMPTS), seed) + 1) / 2).clamp(0, 1)


@pytest.mark.parametrize("kind", sorted(BACKBONES))
def test_every_tiny_backbone_trains_and_exports_a_pipeline_that_reproduces_didr_sample(kind, tmp_path_factory):
    run = tiny_run(kind, tmp_path_factory, *(["backbone.generator_steps=2"] if kind == "zimage" else []))
    metrics = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert len(metrics) == 2 and all(torch.isfinite(torch.tensor(m["generator_loss"])) for m in metrics)
    info = json.loads((run / "export" / "sampling.json").read_text())
    assert {"times", "renoise", "scheduler", "max_sequence_length", "call"} <= set(info) and info["call"]["height"] == 16
    assert json.loads((run / "export" / "model_index.json").read_text())["scheduler"][1] == info["scheduler"]
    assert "from_pretrained" in (run / "export" / "README.md").read_text()
    torch.testing.assert_close(didr_images(run), stock_images(run), rtol=0, atol=1e-5)


def test_a_dmd2_four_step_generator_injects_the_pipelines_fresh_noise(tmp_path_factory):
    """DMD2's 4-step sampling (timesteps 999, 749, 499, 249, fresh noise between steps, as its
    LCMScheduler draws it from the pipeline's generator after the latents): the export reproduces
    didr sample, and the first injected noise is not z."""
    run = tiny_run("sdxl", tmp_path_factory, "backbone.generator_times=[1.0,0.75,0.5,0.25]", "backbone.generator_renoise=fresh", "train.steps=2")
    info = json.loads((run / "export" / "sampling.json").read_text())
    assert info["call"]["timesteps"] == [999, 749, 499, 249] and info["scheduler"] == "LCMScheduler"
    torch.testing.assert_close(didr_images(run, seed=11), stock_images(run, seed=11), rtol=0, atol=1e-5)
    stream = torch.Generator().manual_seed(11)
    z = torch.randn(2, 4, 8, 8, generator=stream)
    assert not torch.equal(torch.randn(2, 4, 8, 8, generator=stream), z)  # the stream goes on: the noise between steps is new


def test_a_generator_that_predicts_the_sample_is_exported_with_its_own_prediction_type(tmp_path_factory):
    """SDXL-Lightning's one-step UNet predicts x0 while its SDXL reference predicts noise: the generator
    runs, and the export's scheduler samples, as an x0 predictor; a generator read as epsilon differs."""
    run = tiny_run("sdxl", tmp_path_factory, "backbone.generator_prediction_type=sample", "backbone.generator_t=1.0", "train.steps=1")
    info = json.loads((run / "export" / "sampling.json").read_text())
    scheduler = json.loads((run / "export" / "scheduler" / "scheduler_config.json").read_text())
    assert info["prediction_type"] == scheduler["prediction_type"] == "sample"
    torch.testing.assert_close(didr_images(run), stock_images(run), rtol=0, atol=1e-5)
    from didr.models.sample import Sampler, load_run

    cfg, info = load_run(run)
    sampler = Sampler(cfg, run / "export")
    as_eps, as_x0 = (sampler.sample(list(PROMPTS), info["times"], seed=7, prediction=p) for p in ("epsilon", "sample"))
    assert (as_eps - as_x0).abs().max() > 0.1


def test_the_kohya_lora_loads_into_the_stock_pipeline_and_matches_the_diffusers_one(sdxl_run):
    from didr.testing.tiny import tiny_sdxl_cond

    x, t, cond = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(0)), torch.tensor([399, 399]), tiny_sdxl_cond(2, torch.Generator().manual_seed(1))

    def unet_out(lora):
        pipe = diffusers.StableDiffusionXLPipeline.from_pretrained(sdxl_run / "tiny" / "sdxl")
        if lora is not None:
            pipe.load_lora_weights(lora)
        with torch.no_grad():
            return pipe.unet(x, t, cond["encoder_hidden_states"], added_cond_kwargs={k: cond[k] for k in ("text_embeds", "time_ids")}).sample

    kohya, plain, base = unet_out(sdxl_run / "export" / "lora_kohya.safetensors"), unet_out(sdxl_run / "export" / "lora"), unet_out(None)
    assert (plain - base).abs().max() > 1e-5  # the LoRA changes the UNet
    torch.testing.assert_close(kohya, plain, rtol=1e-5, atol=1e-6)


def test_reference_guidance_defaults_per_backbone(tmp_path, sdxl_run):
    from didr.diffusion.denoiser import GuidedDenoiser

    t2i = start(run_config("tiny-sdxl.yaml", tmp_path, tiny=False, pretrained=str(sdxl_run / "tiny" / "sdxl")), tmp_path / "out")
    assert isinstance(t2i.reference, GuidedDenoiser) and t2i.reference.scale == 8.0  # DMD2's real-score guidance
    null = t2i.reference.null_cond(t2i.prompts.sample(2))
    assert null["encoder_hidden_states"].abs().sum() == 0  # SDXL's zeros for an empty negative prompt


def test_didr_sample_writes_images(sdxl_run, tmp_path):
    assert main(["sample", str(sdxl_run), "--prompt", "a cat", "--prompt", "a dog", "--out", str(tmp_path)]) == 0
    assert sorted(p.name for p in tmp_path.glob("*.png")) == ["00000.png", "00001.png"]


def test_text_embeddings_are_cached(sdxl_run):
    assert len(list((sdxl_run / "text_cache").glob("*.safetensors"))) == 2  # the prompts and the negative prompt


def run_config(base: str, tmp_path: Path, **backbone) -> Path:
    data = yaml.safe_load((CONFIGS / base).read_text())
    data["backbone"].update(backbone)
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def start(config: Path, out: Path):
    from didr import config as cfgio
    from didr.experiments.config import RunConfig
    from didr.experiments.text_to_image import build

    return build(cfgio.load(RunConfig, config).backbone, out)


def test_missing_weights_name_what_was_expected(tmp_path, sdxl_run):
    cfg = run_config("tiny-sdxl.yaml", tmp_path, tiny=False, pretrained=str(tmp_path / "nowhere"))
    with pytest.raises(ModelLoadError, match=r"backbone.pretrained: .*nowhere does not exist \(expected a folder holding model_index.json\)"):
        start(cfg, tmp_path / "out")
    cfg = run_config("tiny-sdxl.yaml", tmp_path, tiny=False, pretrained=str(sdxl_run / "tiny" / "sdxl"), generator_weights=str(tmp_path / "dmd2.bin"))
    with pytest.raises(ModelLoadError, match="generator_weights: .*dmd2.bin does not exist"):
        start(cfg, tmp_path / "out")
    cfg = run_config("tiny-zimage.yaml", tmp_path, tiny=False, pretrained="nobody/no-such-model")
    with pytest.raises(ModelLoadError, match="nobody/no-such-model"):
        start(cfg, tmp_path / "out")


def test_backbone_mismatches_stop_before_training(tmp_path, sdxl_run):
    from diffusers import UNet2DConditionModel

    from didr.testing.tiny import tiny_sdxl_unet

    src = str(sdxl_run / "tiny" / "sdxl")
    with pytest.raises(ConfigError, match="expects SDXL's text_time conditions; use kind: sdxl"):
        start(run_config("tiny-sdxl.yaml", tmp_path, tiny=False, pretrained=src, kind="sd"), tmp_path / "out")
    wide = UNet2DConditionModel(**{**tiny_sdxl_unet().config, "in_channels": 8})
    wide.save_pretrained(tmp_path / "wide")
    with pytest.raises(ConfigError, match="generator unet takes 8 input channels but the VAE's latents give 4"):
        start(run_config("tiny-sdxl.yaml", tmp_path, tiny=False, pretrained=src, generator=str(tmp_path / "wide")), tmp_path / "out")
    plain = UNet2DConditionModel(**{**tiny_sdxl_unet().config, "addition_embed_type": None})
    plain.save_pretrained(tmp_path / "plain")
    out = tmp_path / "run"
    cfg = run_config("tiny-sdxl.yaml", tmp_path, tiny=False, pretrained=src, generator=str(tmp_path / "plain"))
    assert main(["train", str(cfg), "--out", str(out)]) == 2
    assert not (out / "metrics.jsonl").exists()


def test_bf16_storage_and_autocast_with_lora_generator(tmp_path):
    """bf16 frozen weights and bf16 autocast, LoRA on the generator and the TA: the run trains and
    exports a float32 transformer that stock diffusers loads."""
    from diffusers import ZImageTransformer2DModel

    sets = ["backbone.dtype=bfloat16", "backbone.autocast=bf16", "backbone.generator_lora_rank=4", "train.steps=1"]
    assert main(["train", str(CONFIGS / "tiny-zimage.yaml"), "--out", str(tmp_path)] + [a for s in sets for a in ("--set", s)]) == 0
    from diffusers import ZImagePipeline

    net = ZImageTransformer2DModel.from_pretrained(tmp_path / "export" / "transformer")
    assert next(net.parameters()).dtype == torch.float32
    pipe = ZImagePipeline.from_pretrained(tmp_path / "tiny" / "zimage")
    pipe.load_lora_weights(tmp_path / "export" / "lora")  # the LoRA alone, onto the stock base
    assert any("lora" in n for n, _ in pipe.transformer.named_parameters())


def test_refl_regulariser_is_trained_on_tiny_sdxl(tmp_path):
    """method.name=refl method.refl_reg=10 trains -E[r] + 10 E||g(z) - g_0(z)||^2, not plain -E[r]."""
    sets = ["method.name=refl", "method.refl_reg=10", "train.steps=2"]
    assert main(["train", str(CONFIGS / "tiny-sdxl.yaml"), "--out", str(tmp_path)] + [a for s in sets for a in ("--set", s)]) == 0
    metrics = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert len(metrics) == 2 and all("reg" in m for m in metrics)
    # from step 2 on the generator has moved off its start, so the regulariser is positive
    assert metrics[-1]["reg"] > 0
    assert metrics[-1]["generator_loss"] == pytest.approx(-metrics[-1]["reward"] + 10 * metrics[-1]["reg"], rel=1e-4, abs=1e-6)


@pytest.mark.parametrize("lora", [4, 0], ids=["LoRA generator", "full fine-tuning"])
def test_refl_target_is_the_initial_generator(tmp_path, sdxl_run, lora):
    """The regression target is the generator as it started: with a LoRA, the same network with its
    adapter off (no copy); with full fine-tuning, a frozen copy. Moving the generator moves the
    loss by exactly refl_reg times the mean squared distance to where it started."""
    from didr import config as cfgio
    from didr.experiments.config import RunConfig
    from didr.experiments.text_to_image import build, build_run_objective
    from didr.models.lora import AdaptersOff, FrozenCopy

    path = run_config("tiny-sdxl.yaml", tmp_path, tiny=False, pretrained=str(sdxl_run / "tiny" / "sdxl"), generator_lora_rank=lora)
    cfg = cfgio.load(RunConfig, path, ["method.name=refl", "method.refl_reg=10"])
    t2i = build(cfg.backbone, tmp_path / "out")
    objective = build_run_objective(cfg, t2i)
    z, cond = t2i.sample_inputs(2, torch.Generator().manual_seed(0))
    with torch.no_grad():
        start_x0 = t2i.generator(z, cond)
        for name, p in t2i.generator.named_parameters():
            if p.requires_grad and ("lora_B" in name or not lora):
                p.add_(0.02 * torch.randn_like(p))
        moved = t2i.generator(z, cond)
        loss, logs = objective(moved, cond, t2i.reference, None, z=z)
    expected = float(((moved - start_x0) ** 2).reshape(2, -1).mean(1).mean())
    assert expected > 1e-6 and logs["reg"] == pytest.approx(expected, rel=1e-4)
    assert float(loss) == pytest.approx(-logs["reward"] + 10 * expected, rel=1e-4)
    # with a LoRA, no second network: the initial generator is the same one with its adapter off
    assert isinstance(objective.initial_generator, AdaptersOff if lora else FrozenCopy)
    assert all(p.requires_grad for n, p in t2i.generator.named_parameters() if "lora_" in n)  # left trainable


def test_four_step_preset_trains_one_step_on_its_own_earlier_steps(tmp_path, zimage_run, monkeypatch):
    """configs/zimage-turbo-4step.yaml on the tiny Z-Image: a training call runs the generator's
    first three steps without gradient and the fourth with it; sampling runs all four."""
    cfg = run_config("zimage-turbo-4step.yaml", tmp_path, tiny=False, pretrained=str(zimage_run / "tiny" / "zimage"), generator=None,
                     prompt_list=["a cat"], reward="tiny-clip", resolution=16, max_sequence_length=32, generator_lora_rank=4,
                     ta_lora_rank=4, dtype="float32", autocast="none", device="cpu")
    gen = start(cfg, tmp_path / "out").generator
    assert gen.times == pytest.approx([1.0, 0.9, 0.75, 0.5]) and gen.renoise == "ddim" and not gen.unrolled
    grad_modes = []
    gen.denoiser.net.register_forward_hook(lambda *_: grad_modes.append(torch.is_grad_enabled()))
    monkeypatch.setattr(gen, "pick_step", lambda device: 3)
    z, cond = torch.randn(1, 16, 8, 8), {"cap_feats": [torch.randn(4, 32)]}
    assert gen.train()(z, cond).requires_grad and grad_modes == [False, False, False, True]
    grad_modes.clear()
    with torch.no_grad():
        gen.eval()(z, cond)
    assert len(grad_modes) == 4


def frozen_storage(*nets) -> int:
    """Bytes of distinct frozen (non-adapter) tensors held by the networks."""
    seen = {}
    for net in nets:
        for name, p in net.named_parameters():
            if "lora_" not in name:
                seen[p.data_ptr()] = p.numel() * p.element_size()
    return sum(seen.values())


def test_lora_generator_over_the_reference_holds_one_base(tmp_path, sdxl_run):
    """The tiny SDXL preset's generator is a LoRA over the reference itself: reference, TA and
    generator share one network (one adapter per role); share_base: false gives it its own copy."""
    src = str(sdxl_run / "tiny" / "sdxl")
    shared = start(run_config("tiny-sdxl.yaml", tmp_path, tiny=False, pretrained=src), tmp_path / "a")
    net = shared.generator.denoiser.net
    assert net is shared.pipe.net and shared.ta.net is net
    assert frozen_storage(net) == frozen_storage(shared.pipe.net)
    assert {id(p) for p in shared.generator.parameters()}.isdisjoint({id(p) for p in shared.ta.parameters()})
    apart = start(run_config("tiny-sdxl.yaml", tmp_path, tiny=False, pretrained=src, share_base=False), tmp_path / "b")
    assert apart.generator.denoiser.net is not apart.pipe.net
    assert frozen_storage(apart.generator.denoiser.net, apart.pipe.net) == 2 * frozen_storage(apart.pipe.net)


def test_checkpoints_hold_each_roles_adapter_alone(sdxl_run):
    from safetensors.torch import load_file

    (step,) = sorted((sdxl_run / "checkpoints").glob("step-*"))[-1:]
    keys = [k for k in load_file(str(step / "tensors-rank00000.safetensors")) if not k.startswith("optim.")]
    assert {k.split(".")[0] for k in keys} == {"generator", "ta"}
    assert all("lora_" in k for k in keys)
    assert all("/generator/" in k for k in keys if k.startswith("generator.")) and all("/ta/" in k for k in keys if k.startswith("ta."))


def test_shared_base_run_resumes_bit_identically(tmp_path):
    from safetensors.torch import load_file

    whole, split = tmp_path / "whole", tmp_path / "split"
    assert main(["train", str(CONFIGS / "tiny-sdxl.yaml"), "--out", str(whole)]) == 0
    assert main(["train", str(CONFIGS / "tiny-sdxl.yaml"), "--out", str(split), "--set", "train.steps=1"]) == 0
    assert main(["train", str(CONFIGS / "tiny-sdxl.yaml"), "--out", str(split), "--resume", "--set", "train.steps=2"]) == 0
    for part in ("checkpoints/step-00000002/tensors-rank00000.safetensors", "export/unet/diffusion_pytorch_model.safetensors"):
        a, b = load_file(str(whole / part)), load_file(str(split / part))
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_a_released_lora_starts_the_generator(tmp_path, sdxl_run):
    """generator_lora: the LoRA a run exported, loaded over the same base, is the generator that run exported."""
    src = str(sdxl_run / "tiny" / "sdxl")
    cfg = run_config("tiny-sdxl.yaml", tmp_path, tiny=False, pretrained=src, generator_lora_rank=0, generator_lora=str(sdxl_run / "export" / "lora"))
    t2i = start(cfg, tmp_path / "out")
    assert t2i.generator.denoiser.net is t2i.pipe.net and t2i.generator.denoiser.adapter == "generator"
    from didr.models.generators import StepGenerator
    from didr.models.sample import Sampler, load_run

    cfg_run, info = load_run(sdxl_run)
    sampler = Sampler(cfg_run, sdxl_run / "export")
    exported = StepGenerator(sampler.denoiser(1), info["times"]).eval()
    z, cond = t2i.sample_inputs(2, torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(t2i.generator(z, cond), exported(z, cond), rtol=1e-4, atol=1e-4)
    wrong = run_config("tiny-sdxl.yaml", tmp_path, tiny=False, pretrained=src, generator_lora_rank=8, generator_lora=str(sdxl_run / "export" / "lora"))
    with pytest.raises(ConfigError, match="generator_lora_rank: 8.*rank 4"):
        start(wrong, tmp_path / "out2")


def test_refl_target_of_a_released_lora_generator_keeps_that_lora(tmp_path, sdxl_run):
    """A generator started from a released LoRA starts as base + that LoRA, not as the base: ReFL's
    target is a frozen copy of its adapters over the same shared base, and stays put as it trains."""
    from didr import config as cfgio
    from didr.experiments.config import RunConfig
    from didr.experiments.text_to_image import build, build_run_objective

    path = run_config("tiny-sdxl.yaml", tmp_path, tiny=False, pretrained=str(sdxl_run / "tiny" / "sdxl"), generator_lora_rank=0,
                      generator_lora=str(sdxl_run / "export" / "lora"))
    cfg = cfgio.load(RunConfig, path, ["method.name=refl", "method.refl_reg=10"])
    t2i = build(cfg.backbone, tmp_path / "out")
    initial = build_run_objective(cfg, t2i).initial_generator
    z, cond = t2i.sample_inputs(2, torch.Generator().manual_seed(0))
    with torch.no_grad():
        start_x0 = t2i.generator(z, cond)
        torch.testing.assert_close(initial(z, cond), start_x0)
        for p in t2i.generator.parameters():
            p.add_(0.02 * torch.randn_like(p))
        assert (t2i.generator(z, cond) - start_x0).abs().max() > 1e-4
        torch.testing.assert_close(initial(z, cond), start_x0)
    base_ids = {id(p) for n, p in t2i.pipe.net.named_parameters() if "lora_" not in n}
    copied = initial.module.denoiser.net
    assert all(id(p) in base_ids for n, p in copied.named_parameters() if "lora_" not in n)  # the base is not copied


def test_the_shared_base_trains_sharded_on_two_processes_as_on_one(tmp_path, sdxl_run):
    """FSDP2 holds one frozen base with a LoRA adapter per role: the tiny SDXL preset's generator,
    TA and reference over one network, sharded block by block on two gloo processes, train as one
    process accumulating the same two micro-batches per step, and the generator gathered whole for
    the export samples as that process's does."""
    from torch.distributed.tensor import DTensor

    from didr import config as cfgio
    from didr.experiments.config import RunConfig
    from didr.experiments.text_to_image import build, build_run_objective
    from didr.train import Alignment, Trainer
    from didr.train.fsdp import ShardingPlan
    from tests.gloo_ranks import on_two_gloo_ranks, rank_accelerator

    # built beforehand: transformers writes no weights outside rank 0 once a process group exists
    path = run_config("tiny-sdxl.yaml", tmp_path, tiny=False, pretrained=str(sdxl_run / "tiny" / "sdxl"), reward=f"pickscore:{sdxl_run / 'tiny' / 'clip'}")

    def trained(out, grad_accum=1, sharded=False):
        cfg = cfgio.load(RunConfig, path, ["train.steps=2", f"train.grad_accum={grad_accum}"])
        t2i = build(cfg.backbone, out)
        alignment = Alignment(t2i.generator, t2i.reference, t2i.ta, build_run_objective(cfg, t2i), t2i.sample_inputs, t2i.networks)
        trainer = Trainer(alignment, cfg.train, accelerator=rank_accelerator() if sharded else None, sharding=ShardingPlan() if sharded else None)
        if sharded:
            assert isinstance(t2i.pipe.net.get_parameter("conv_in.weight"), DTensor)
            assert all(isinstance(p, DTensor) for p in [*t2i.generator.parameters(), *t2i.ta.parameters()])
        trainer.run()
        generator = trainer.unsharded_generator()
        if generator is None:
            return None
        assert not any(isinstance(p, DTensor) for p in generator.parameters())
        z, cond = t2i.sample_inputs(2, torch.Generator().manual_seed(0))
        with torch.no_grad():
            return generator.eval()(z, cond)

    two = on_two_gloo_ranks(lambda rank: trained(tmp_path / f"rank{rank}", sharded=True))
    one = trained(tmp_path / "one", grad_accum=2)
    assert two[1] is None
    torch.testing.assert_close(two[0], one, rtol=0, atol=1e-5)


def test_a_generators_times_come_from_its_own_scheduler_not_the_references(tmp_path, zimage_run):
    """A 4-step generator from a pipeline whose scheduler shifts by 3 (Z-Image-Turbo's), over a
    reference whose scheduler shifts by 6: the times are the generator's [1, 0.9, 0.75, 0.5]; taken
    from the reference they would be others."""
    import shutil

    tiny = zimage_run / "tiny" / "zimage"
    reference = tmp_path / "reference"
    shutil.copytree(tiny, reference)
    config = json.loads((reference / "scheduler" / "scheduler_config.json").read_text())
    (reference / "scheduler" / "scheduler_config.json").write_text(json.dumps({**config, "shift": 6.0}))
    sets = dict(tiny=False, pretrained=str(reference), generator_steps=4, generator_t=1.0)
    own = start(run_config("tiny-zimage.yaml", tmp_path, generator=str(tiny), **sets), tmp_path / "a").generator
    assert own.times == pytest.approx([1.0, 0.9, 0.75, 0.5])
    borrowed = start(run_config("tiny-zimage.yaml", tmp_path, **sets), tmp_path / "b").generator
    assert borrowed.times[1:] != pytest.approx([0.9, 0.75, 0.5], abs=0.01)
