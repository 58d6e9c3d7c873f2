"""benchmarks/record_bench.py: the recorded report comes from the runs' own metrics.json, and a
rerun of the same command is checked against the first run's figures."""

import json
import sys
from pathlib import Path

import pytest

from didr.config import to_dict
from didr.experiments.digits.bench import preset
from tests.helpers import load_benchmark


@pytest.fixture(scope="module")
def record_bench():
    return load_benchmark("record_bench")


def _rows(family, setting, rewards, fids):
    return [{"label": f"{family} {setting}".strip(), "family": family, "setting": setting, "seed": s, "reward": r, "fid_real": f, "fid_opt": f + 1,
             "gold_deficit": 0.1, "precision": 0.8, "recall": 0.6, "nfe": 1, "seconds": 10.0 + s} for s, (r, f) in enumerate(zip(rewards, fids))]


def _result(total: float, fast: bool = False, shift: float = 0.0) -> dict:
    teacher = {"label": "teacher 30 steps", "family": "teacher", "setting": "", "seed": None, "reward": 0.3, "fid_real": 10.0, "fid_opt": 9.0,
               "gold_deficit": 0.1, "precision": 0.8, "recall": 0.6, "nfe": 30, "seconds": 5.0}
    rows = [teacher, *_rows("DI", "", [0.30, 0.31, 0.29], [10.0, 10.1, 9.9]), *_rows("DIDR", "b=1", [0.6, 0.62, 0.61], [10.0 + shift, 10.1, 9.9]),
            *_rows("DI++", "a=1", [0.6, 0.61, 0.59], [13.0, 13.1, 12.9])]
    return {"dataset": "mnist", "fast": fast, "config": to_dict(preset("mnist", fast=fast)), "machine": "test machine", "date": "2026-01-01",
            "load": {"start": 1.0, "end": 2.0}, "train": 4000, "heldout": 1000, "prompts": "text", "phrasings": {"seen": 240, "unseen": 120},
            "seeds": [0, 1, 2], "seconds": {"stages": 300.0 if total > 1000 else 5.0, "total": total}, "rows": rows}


def _run_dir(path: Path, result: dict) -> Path:
    path.mkdir(parents=True)
    (path / "metrics.json").write_text(json.dumps(result))
    for figure in ("frontiers.png", "samples.png"):
        (path / figure).write_bytes(f"{path.name} {figure}".encode())
    return path


def test_the_report_and_its_figures_come_from_the_first_run(record_bench, tmp_path, monkeypatch):
    scratch = _run_dir(tmp_path / "scratch", _result(1400.0))
    rerun = _run_dir(tmp_path / "rerun", {**_result(1100.0), "rows": [{**r, "seconds": 1.0} for r in _result(0.0)["rows"]]})
    changed = _run_dir(tmp_path / "changed", _result(1200.0, shift=0.5))
    fast = _run_dir(tmp_path / "fast", _result(60.0, fast=True))
    out = tmp_path / "results"
    out.mkdir()
    monkeypatch.setattr(sys, "argv", ["record_bench.py", "--name", "mnist", "--out", str(out), "--run", f"from scratch={scratch}",
                                      "--run", f"cached stages={rerun}", "--run", f"again={changed}", "--run", f"smoke test={fast}"])
    record_bench.main()
    text = (out / "mnist.md").read_text()
    assert "| from scratch | `didr bench mnist --out DIR` | 1400 | 300 | 1100 |" in text
    # the same command again: its figures are compared with the first run's, times aside
    assert "| cached stages (figures identical to the first run's) | `didr bench mnist --out DIR` | 1100 |" in text
    assert "| again (figures DIFFERENT from the first run's) |" in text
    assert "| smoke test | `didr bench mnist --fast --out DIR` | 60 | 5 | 55 |" in text  # another command: not compared
    assert "| DIDR b=1 | 3 | 1 | 0.610 ± 0.025 |" in text  # the first run's rows, not a later one's
    assert (out / "mnist_frontiers.png").read_bytes() == b"scratch frontiers.png"
    assert (out / "mnist_samples.png").read_bytes() == b"scratch samples.png"
    assert "## Related results" in text and "[mnist_init.md](mnist_init.md)" in text


def test_the_ablation_table_goes_into_the_report(record_bench, tmp_path, monkeypatch):
    scratch = _run_dir(tmp_path / "scratch", _result(1400.0))
    teacher = _result(0.0)["rows"][0]
    rows = [teacher, *_rows("DI", "baseline", [0.3, 0.3], [10.5, 10.7]), *_rows("DI", "steps x2", [0.3, 0.3], [12.0, 12.4])]
    ablation = tmp_path / "ablation"
    ablation.mkdir()
    (ablation / "ablation.json").write_text(json.dumps({"dataset": "mnist", "machine": "test machine", "date": "2026-01-01", "seconds": 99.0,
                                                        "seeds": [0, 1], "rows": rows, "notes": {"DI baseline": "the loop", "DI steps x2": "budget"}}))
    out = tmp_path / "results"
    out.mkdir()
    monkeypatch.setattr(sys, "argv", ["record_bench.py", "--name", "mnist", "--out", str(out), "--run", f"from scratch={scratch}",
                                      "--ablation", str(ablation)])
    record_bench.main()
    text = (out / "mnist.md").read_text()
    assert "## Distillation ablation" in text and "`didr bench mnist --ablation --out DIR`" in text and "Time: 99 s. Seeds: 0, 1" in text
    assert "| DI baseline | the loop | 2 | 10.6 ± 1.3 | 1.06 | +0.000 | +0.000 | yes |" in text
    assert "| DI steps x2 | budget | 2 | 12.2 ± 2.5 | 1.22 | +0.000 | +0.000 | no |" in text
    assert text.index("## Distillation ablation") > text.index("## Claims")


def test_same_figures_ignores_only_the_times(record_bench):
    a = _result(1400.0)
    assert record_bench.same_figures(a, {**a, "rows": [{**r, "seconds": 0.0} for r in a["rows"]]})
    assert not record_bench.same_figures(a, _result(1400.0, shift=0.01))
    assert not record_bench.same_figures(a, {**a, "fast": True})


def test_a_run_with_more_settings_and_figures_is_compared_on_what_both_have(record_bench):
    a = _result(1400.0)
    more = {**a, "rows": [{**r, "opt_fid_real": 1.0} for r in a["rows"]] + _rows("DIDR k=2", "b=0.25", [0.7, 0.7, 0.7], [9.0, 9.0, 9.0])}
    assert record_bench.same_figures(more, a)
    undefined = {**a, "rows": [{**r, "fid_opt": float("nan")} for r in a["rows"]]}
    assert record_bench.same_figures(undefined, json.loads(json.dumps(undefined)))  # NaN, as metrics.json reads it back, is the same figure
    assert not record_bench.same_figures(more, _result(1400.0, shift=0.01))


def test_included_and_kept_sections(record_bench, tmp_path, monkeypatch):
    scratch = _run_dir(tmp_path / "scratch", _result(1400.0))
    out = tmp_path / "results"
    out.mkdir()
    (out / "mnist.md").write_text("# old\n\n## Claims\n\nold claims\n\n## Distillation ablation: old\n\nits table\n\n## Related results\n\n- x\n")
    (out / "mnist_drs.md").write_text("# The DRS estimators\n\nCommand: `x`\n\n| a |\n")
    monkeypatch.setattr(sys, "argv", ["record_bench.py", "--name", "mnist", "--out", str(out), "--run", f"from scratch={scratch}",
                                      "--section", str(out / "mnist_drs.md"), "--keep-section", "Distillation ablation: old"])
    record_bench.main()
    text = (out / "mnist.md").read_text()
    assert "## The DRS estimators\n\nCommand: `x`" in text and "Recorded as [mnist_drs.md](mnist_drs.md)." in text
    assert "## Distillation ablation: old\n\nits table\n" in text and "old claims" not in text
    assert text.index("## The DRS estimators") < text.index("## Distillation ablation") < text.index("## Related results")
