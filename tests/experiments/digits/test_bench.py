"""The digits benchmark end to end (``didr bench digits --fast``): it checks the report's contents
and the caching, not the science (the fast preset trains for a few steps only)."""

import json
import shutil

import pytest
import torch

from didr import config as cfgio
from didr.cli import main
from didr.errors import RewardError
from didr.experiments.config import DigitsConfig, RunConfig
from didr.experiments.digits import bench as digits_bench
from didr.experiments.digits import stages as digits_stages
from didr.experiments.digits.bench import ablation, ablation_settings, preset, run_train_config, sweep
from didr.experiments.digits.evaluate import EVAL_SEED, Evaluator
from didr.experiments.digits.presets import FAST, PRESETS
from didr.experiments.digits.prompts import ClassPrompts, TextPrompts, where_null
from didr.experiments.digits.rewards import data_key, rewards_cached
from didr.experiments.digits.stages import DSMShards, align, distill_generator, generate, prepare_stages, teacher_sample, teacher_sample_split
from didr.experiments.sweep import STRENGTH_GRIDS
from tests.helpers import ROOT


@pytest.fixture(scope="module")
def fast_bench(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench") / "digits"
    assert main(["bench", "digits", "--fast", "--di-seeds", "3", "--jobs", "2", "--out", str(out)]) == 0
    return out


def test_fast_bench_writes_the_report_table_figures_and_claims(fast_bench):
    report = (fast_bench / "report.md").read_text()
    runs = sweep(True, preset("digits", fast=True).method)
    labels = ["real (train)", "teacher 30 steps", "initial 1 step"] + [r.label for r in runs]
    assert "| method | seeds | NFE | reward | proxy | gold | acc seen | acc unseen | FID real | FID p* | ESS p* | precision | recall | seconds |" in report
    for label in labels:
        assert f"| {label} |" in report
    assert "## Claims" in report and "Machine:" in report and "Command: `didr bench digits --fast" in report
    assert "## At equal reward, paired by seed" in report and "Seeds: 0, 1" in report
    metrics = json.loads((fast_bench / "metrics.json").read_text())
    # every setting once per seed, in order; DI with its own, larger number of seeds
    assert [r["label"] for r in metrics["rows"]] == labels[:3] + [r.label for r in runs for _ in range(3 if r.family == "DI" else 2)]
    assert [r["seed"] for r in metrics["rows"][3:7]] == [0, 1, 2, 0]
    assert metrics["seeds"] == [0, 1] and metrics["di_seeds"] == [0, 1, 2]
    assert metrics["claims"]["di_fidelity"]["seeds"] == 3 and "over 3 seeds" in report
    assert "DI 0 to 2 (3 seeds" in report
    # the frontiers pair DI's seeds that the other methods ran
    assert all("2 paired seeds" in c["summary"] for c in metrics["comparisons"] if c["ranges"])
    for row in metrics["rows"]:
        assert all(isinstance(row[k], float) and row[k] == row[k] for k in ("reward", "gold", "fid_real", "precision", "recall"))
    assert set(metrics["claims"]) >= {"beats_teacher_holds", "beats_teacher", "ahead"}
    assert {c["b"] for c in metrics["comparisons"]} == {"DI++", "DMD+r", "ReFL", "DIDR MC"}
    assert (fast_bench / "frontiers.png").stat().st_size > 0 and (fast_bench / "samples.png").stat().st_size > 0
    assert len(list((fast_bench / "grids").glob("*.png"))) == len(labels) - 1  # every label but the real images
    # the Monte-Carlo DRS estimator runs too, and no pairing of alpha with 1 / beta is left
    assert any("MC" in label for label in labels)
    assert "matched" not in report.lower()
    # the floor under FID real at each run's reward, its excess, and DIDR's calibration
    assert "## Fidelity at equal reward: the optimum's floor" in report and "## Calibration: the beta each DIDR run" in report
    scored = [r for r in metrics["rows"] if r["family"] != "real"]
    assert all(r["excess_fid"] == pytest.approx(r["fid_real"] - r["opt_fid_real"]) for r in scored if r["opt_fid_real"] == r["opt_fid_real"])
    assert all("beta_teacher" in r for r in scored if r["family"].startswith("DIDR")) and not any("beta_teacher" in r for r in scored if r["family"] == "DI++")
    assert set(metrics["calibration_targets"]["teacher"]) == {"1", "0.5"} and len(metrics["floor_curve"]["reward"]) == 25
    assert "Benjamini-Hochberg at 5%" in report


def test_worker_processes_change_no_figure(fast_bench, tmp_path):
    """The fixture trained its runs in 2 worker processes; in this process alone, on the same
    stages, every row is the same but for the times."""
    shutil.copytree(fast_bench / "stages", tmp_path / "stages")
    assert main(["bench", "digits", "--fast", "--di-seeds", "3", "--jobs", "1", "--out", str(tmp_path)]) == 0
    strip = lambda path: [{k: v for k, v in r.items() if k != "seconds"} for r in json.loads((path / "metrics.json").read_text())["rows"]]  # noqa: E731
    assert strip(tmp_path) == strip(fast_bench)
    assert json.loads((fast_bench / "metrics.json").read_text())["jobs"] == 2


def test_rewards_trained_beside_the_reference_are_the_ones_trained_after_it(fast_bench, tmp_path):
    """The fixture's stages were built with --jobs 2 (the rewards in another process): built in
    this process alone, every stage has the same weights."""
    from safetensors.torch import load_file

    prepare_stages(preset("digits", fast=True).digits, 0, tmp_path, progress=False, jobs=1)
    for name in ("reference", "classifier", "eval_classifier", "preference", "generator_init"):
        mine, theirs = load_file(tmp_path / f"{name}.safetensors"), load_file(fast_bench / "stages" / f"{name}.safetensors")
        assert mine.keys() == theirs.keys() and all(torch.equal(mine[k], theirs[k]) for k in mine), name


def test_a_teacher_pool_split_across_two_processes_is_the_same_pool():
    """Text prompts, guidance, three batches (the split falls after the first): the samples the
    spawned process draws are the ones this process would have drawn."""
    from didr.diffusion.denoiser import GuidedDenoiser
    from didr.diffusion.schedules import make_schedule
    from didr.models.text import PromptSet
    from didr.models.unet import UNetDenoiser

    torch.manual_seed(0)
    rows = [{"text_embeds": torch.randn(6), "digit": torch.tensor(i % 10)} for i in range(12)]
    prompts = TextPrompts({"seen": PromptSet([f"p{i}" for i in range(12)], rows, {"text_embeds": torch.zeros(6), "digit": torch.tensor(-1)})}, {})
    reference = GuidedDenoiser(UNetDenoiser(make_schedule("vp-cosine"), 10, (8, 8), 1, text_dim=6).eval(), 2.0, prompts.null_cond)
    z, cond = torch.randn(40, 1, 8, 8), prompts.batch(torch.arange(40) % 12)
    alone = teacher_sample(reference, z, cond, steps=3, batch=16)
    assert torch.equal(teacher_sample_split(reference, z, cond, steps=3, jobs=2, batch=16), alone)
    assert torch.equal(teacher_sample_split(reference, z, cond, steps=3, jobs=1, batch=16), alone)


def test_a_rerun_reuses_cached_stages_and_methods(fast_bench):
    files = sorted((fast_bench / "stages").glob("*.safetensors")) + sorted((fast_bench / "runs").glob("*/generator.safetensors"))
    assert (fast_bench / "stages" / "teacher_eval.safetensors") in files  # the teacher's evaluation samples too
    assert len(files) >= 7 + 2 * len(sweep(True, preset("digits", fast=True).method))
    before = {f: f.stat().st_mtime_ns for f in files}
    teacher = lambda: next(r for r in json.loads((fast_bench / "metrics.json").read_text())["rows"] if r["family"] == "teacher")  # noqa: E731
    first = teacher()
    assert main(["bench", "digits", "--fast", "--out", str(fast_bench)]) == 0
    assert {f: f.stat().st_mtime_ns for f in files} == before
    assert teacher() == first  # the same samples, and the time it took to draw them


def test_the_evaluation_scores_with_the_training_reward_and_the_evaluation_classifier(fast_bench):
    """One pass per network: the reported reward is the training reward's own value, prompt
    accuracy the evaluation classifier's, bit for bit."""
    from didr.eval.image_metrics import prompt_accuracy
    from didr.rewards.base import call_reward

    stages = prepare_stages(preset("digits", fast=True).digits, 0, fast_bench / "stages", progress=False)
    z, c = stages.inputs(120, EVAL_SEED)
    x = generate(stages.generator, z, c).clamp(-1, 1)
    scores = Evaluator(stages)(x, c)
    with torch.no_grad():
        assert scores["reward"] == float(call_reward(stages.reward, x, c).mean())
        assert scores["preference"] == float(stages.preference(x, c).mean())
    assert scores["prompt_accuracy"] == prompt_accuracy(stages.eval_classifier, x, stages.prompts.digits(c))


def test_cached_rewards_spawn_no_process_to_train_them(fast_bench, tmp_path, monkeypatch):
    cfg = preset("digits", fast=True).digits
    key = data_key(cfg, 0)
    assert rewards_cached(cfg, key, fast_bench / "stages") and not rewards_cached(cfg, key, tmp_path)
    shutil.copytree(fast_bench / "stages", tmp_path / "stages")
    monkeypatch.setattr(digits_stages, "rewards_aside", lambda *a: pytest.fail("a process was spawned for cached rewards"))
    prepare_stages(cfg, 0, tmp_path / "stages", progress=False, jobs=2)


def test_a_sharded_dsm_batch_is_the_batch_the_reference_always_drew():
    """One shard: exactly the loss of the loop before shards existed (the same draws in the same
    order); two shards: parts that add up to it."""
    from didr.data.digits import load_digit_data, stroke_style
    from didr.diffusion.losses import dsm_loss, sample_times
    from didr.diffusion.schedules import make_schedule
    from didr.models.unet import UNetDenoiser

    data, prompts = load_digit_data("digits", 0.25, 0), ClassPrompts(10)
    torch.manual_seed(0)
    net = UNetDenoiser(make_schedule("vp-cosine"), 10, (8, 8), 1)
    one, two = DSMShards(data, prompts, net.schedule, 10, 0.3, 1, seed=4), DSMShards(data, prompts, net.schedule, 10, 0.3, 2, seed=4)
    for _ in range(2):
        one.advance()
        two.advance()
    gen, x, y = torch.Generator().manual_seed(4), data.train_x, data.train_y
    for _ in range(2):  # the loop as it was written before shards
        idx = torch.randint(0, len(x), (10,), generator=gen)
        c = prompts.batch(prompts.for_images(y[idx], stroke_style(x, y)[idx], gen))
        c = where_null(torch.rand(10, generator=gen) < 0.3, prompts.null_cond(c), c)
        t = sample_times(10, net.schedule, generator=gen)
        plain = dsm_loss(net, x[idx], t, c, noise=torch.randn(x[idx].shape, generator=gen)).mean()
    assert torch.equal(one.loss(net, 0), plain)
    torch.testing.assert_close(two.loss(net, 0) + two.loss(net, 1), plain)
    with pytest.raises(Exception, match="ref_shards"):
        preset("digits", True, ["digits.ref_shards=0"])


def test_a_nan_reward_stops_the_run_naming_the_reward(fast_bench, tmp_path):
    from didr.objectives.config import MethodConfig

    cfg = preset("digits", fast=True)
    stages = prepare_stages(cfg.digits, 0, fast_bench / "stages", progress=False)  # all cached
    stages.reward.preference.std.fill_(float("nan"))
    with pytest.raises(RewardError, match="'preference'"):
        align(stages, MethodConfig(name="didr", beta=0.5), cfg.train, tmp_path)


def test_didr_train_runs_one_method_with_cached_stages(fast_bench, tmp_path):
    shutil.copytree(fast_bench / "stages", tmp_path / "stages")
    fast = [f"digits.{k}={json.dumps(v)}" for k, v in {**PRESETS["digits"]["digits"], **preset_fast()}.items()]
    rc = main(["train", str(ROOT / "configs" / "digits.yaml"), "--out", str(tmp_path), "--set", "method.name=dipp",
               "--set", "train.steps=2", "--set", "train.progress=false", *sum((["--set", s] for s in fast), [])])
    assert rc == 0
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert {"reward", "gold", "fid_real", "fid_opt", "prompt_accuracy"} <= set(metrics)
    assert (tmp_path / "samples.png").exists()


def preset_fast():
    return FAST["digits"]


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_configs_match_the_bench_presets(name):
    assert cfgio.load(RunConfig, ROOT / "configs" / f"{name}.yaml") == preset(name, fast=False)


def test_bad_settings_exit_2_naming_the_field(tmp_path, capsys):
    assert main(["bench", "digits", "--fast", "--out", str(tmp_path), "--set", "digits.dataset=cifar"]) == 2
    err = capsys.readouterr().err
    assert "digits.dataset" in err and len(err.strip().splitlines()) == 1
    assert not any(tmp_path.iterdir())  # refused before anything is written


@pytest.mark.parametrize("flag", ["--seeds", "--di-seeds", "--jobs"])
def test_a_seed_count_below_one_exits_2_naming_the_flag(tmp_path, capsys, flag):
    assert main(["bench", "digits", "--fast", "--out", str(tmp_path), flag, "0"]) == 2
    err = capsys.readouterr().err
    assert flag in err and len(err.strip().splitlines()) == 1
    assert not any(tmp_path.iterdir())


def test_one_thread_by_default():
    assert preset("mnist", fast=False).digits.threads == 1 and torch.get_num_threads() >= 1


def test_stages_survive_an_interrupted_run(tmp_path, monkeypatch):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(digits_bench, "align", interrupted)  # in this process: no worker processes
    assert main(["bench", "digits", "--fast", "--jobs", "1", "--out", str(tmp_path)]) == 130
    stages = sorted((tmp_path / "stages").glob("*.safetensors"))
    assert {p.stem for p in stages} >= {"reference", "classifier", "eval_classifier", "preference", "teacher_pool", "generator_init"}
    assert not list((tmp_path / "stages").glob("*.tmp"))
    before = {p: p.stat().st_mtime_ns for p in stages}
    monkeypatch.undo()
    assert main(["bench", "digits", "--fast", "--out", str(tmp_path)]) == 0
    assert {p: p.stat().st_mtime_ns for p in stages} == before


def test_an_interrupt_with_worker_processes_stops_them_and_keeps_finished_runs(fast_bench, tmp_path, monkeypatch):
    shutil.copytree(fast_bench / "stages", tmp_path / "stages")
    evaluated = []

    def evaluate_run(self, setting, seed):
        evaluated.append((setting.label, seed))
        raise KeyboardInterrupt

    monkeypatch.setattr(digits_bench.Bench, "evaluate_run", evaluate_run)
    assert main(["bench", "digits", "--fast", "--jobs", "2", "--out", str(tmp_path)]) == 130
    assert evaluated == [("DI", 0)]  # the first run, trained by a worker, then the interrupt
    finished = list((tmp_path / "runs").glob("*/generator.safetensors"))
    assert (tmp_path / "runs" / "DI_s0" / "generator.safetensors") in finished
    assert not list((tmp_path / "runs").glob("*/*.tmp"))
    assert len(finished) < len(sweep(True, preset("digits", fast=True).method)) * 2  # the queued runs were cancelled


def test_fidelity_ablation_writes_its_table(fast_bench, tmp_path):
    shutil.copytree(fast_bench / "stages", tmp_path / "stages")
    fast = [f"{section}.{k}={json.dumps(v)}" for section, values in FAST.items() for k, v in values.items()]
    every = ablation_settings(preset("digits", fast=True).method)
    variants = [every[0], next(v for v in every if v.target_cfg), next(v for v in every if v.budget != 1.0)]
    result = ablation("digits", tmp_path, fast + ["train.progress=false"], seeds=2, log=lambda s: None, variants=variants)
    text = (tmp_path / "ablation.md").read_text()
    assert "| variant | tests | seeds | FID real | FID real / teacher | precision - teacher | recall - teacher | means within target |" in text
    for v in variants:
        assert f"| {v.label} | {v.note} | 2 |" in text
    steps = {r["label"]: r for r in result["rows"]}
    assert len(result["rows"]) == 3 + 2 * len(variants)
    # the doubled budget ran twice the preset's generator updates
    run_dir = tmp_path / "runs" / "DI_steps_x2_s0"
    assert json.loads((run_dir / "metrics.jsonl").read_text().splitlines()[-1])["step"] == 2 * FAST["train"]["steps"]
    assert steps["DI baseline"]["nfe"] == 1
    # every variant trains DI itself (no reward), whatever the preset's method
    assert all(v.method.name == "di" for v in every)
    logged = json.loads((tmp_path / "runs" / "DI_baseline_s0" / "metrics.jsonl").read_text().splitlines()[-1])
    assert "drs_norm" not in logged and "reward" not in logged


def test_the_regression_ends_with_the_ema_of_its_weights():
    """distill_ema: the initial generator is the EMA of the regressed weights (decay with the same
    short warm-up as the reference's), not the last weights."""
    import copy

    from torch.optim.optimizer import register_optimizer_step_post_hook

    from didr.diffusion.schedules import make_schedule
    from didr.models.unet import OneStepGenerator, UNetDenoiser

    torch.manual_seed(0)
    start = OneStepGenerator(UNetDenoiser(make_schedule("vp-cosine"), 10, (8, 8), 1), 0.999)
    gen = torch.Generator().manual_seed(1)
    pool = {"z": torch.randn(16, 1, 8, 8, generator=gen), "c": torch.arange(16) % 10, "x": torch.randn(16, 1, 8, 8, generator=gen)}
    cfg = DigitsConfig(distill_steps=6, distill_batch=4, distill_ema=0.2)
    raw = copy.deepcopy(start)
    snapshots = []
    handle = register_optimizer_step_post_hook(lambda opt, args, kwargs: snapshots.append([p.detach().clone() for p in raw.parameters()]))
    try:
        distill_generator(raw, pool, ClassPrompts(10), DigitsConfig(distill_steps=6, distill_batch=4), seed=3, progress=False)
    finally:
        handle.remove()
    expected = [p.detach().clone() for p in start.parameters()]
    for step, weights in enumerate(snapshots):
        decay = min(0.2, step / (step + 10))
        expected = [e * decay + w * (1 - decay) for e, w in zip(expected, weights)]
    averaged = copy.deepcopy(start)
    distill_generator(averaged, pool, ClassPrompts(10), cfg, seed=3, progress=False)
    assert len(snapshots) == 6
    for e, p in zip(expected, averaged.parameters()):
        torch.testing.assert_close(p, e, rtol=1e-5, atol=1e-6)
    assert any(not torch.allclose(p, r) for p, r in zip(averaged.parameters(), raw.parameters()))
    with pytest.raises(Exception, match="distill_ema"):
        DigitsConfig(distill_ema=1.0).validate()


@pytest.mark.parametrize("fast", [False, True])
def test_every_endpoint_reward_run_sets_its_alpha(fast):
    """DI++ and dmdr take alpha from the bench's grid, whatever the config's default alpha is."""
    cfg = preset("mnist", fast, ["method.alpha=123"])
    runs = [s for s in sweep(fast, cfg.method) if s.method.name in ("dipp", "dmdr")]
    grid = STRENGTH_GRIDS["digits-fast" if fast else "digits"]
    assert len(runs) == len(grid["dipp"]) + len(grid["dmdr"])
    for setting in runs:
        assert setting.method.alpha in grid[setting.method.name] and setting.method.alpha != 123
        assert run_train_config(setting, cfg, seed=3).seed == 3


def test_the_full_grids_fill_the_frontiers_gaps():
    """ReFL has settings between reg 300 (barely off the initial generator) and 30 (reward hacking),
    none past 300; dmdr's alphas start above the 1-4 that left its reward where DI's is."""
    labels = [s.label for s in sweep(False, preset("mnist", fast=False).method)]
    refl = sorted(float(lab.split("=")[1]) for lab in labels if lab.startswith("ReFL"))
    assert refl[0] == 30 and refl[-1] == 300 and len([r for r in refl if 30 < r < 300]) >= 3
    assert min(float(lab.split("=")[1]) for lab in labels if lab.startswith("DMD+r")) >= 8
    assert len(labels) == len(set(labels))
