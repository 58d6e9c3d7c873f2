"""Every script in examples/ runs end to end on tiny settings, and the README's Python example runs as written."""

import importlib.util
import math
import re
import subprocess
import sys

import pytest

from tests.helpers import ROOT, subprocess_env

EXAMPLES = ROOT / "examples"


def load(name: str):
    spec = importlib.util.spec_from_file_location(f"example_{name}", EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_every_example_is_tested_here():
    tested = set(re.findall(r'load\("(\w+)"\)', (ROOT / "tests" / "examples" / "test_examples.py").read_text()))
    assert {p.stem for p in EXAMPLES.glob("*.py")} == tested


def test_toy_compares_didr_and_dipp_against_the_optimum():
    results = load("toy").main(["--steps", "10"])
    assert set(results) == {"DIDR", "DI++"}
    assert all(math.isfinite(r["w1_equal"]) for r in results.values())


@pytest.mark.parametrize("flags", [[], ["--no-gradient"]], ids=["drp", "monte-carlo"])
def test_a_plain_function_is_a_reward(flags):
    assert 0.0 <= load("custom_reward").main(["--steps", "5", *flags]) <= 1.0


def test_text_to_image_trains_exports_and_samples(tmp_path):
    paths = load("text_to_image").main(["--out", str(tmp_path / "run"), "--steps", "1"])
    assert len(paths) == 2 and all(p.is_file() for p in paths)
    assert (tmp_path / "run" / "export" / "sampling.json").is_file()


def readme_python() -> str:
    blocks = re.findall(r"```python\n(.*?)```", (ROOT / "README.md").read_text(), flags=re.S)
    assert len(blocks) == 1, "the README has one Python example"
    return blocks[0]


def test_the_readme_python_example_runs_as_written(tmp_path):
    proc = subprocess.run([sys.executable, "-c", readme_python()], cwd=tmp_path, env=subprocess_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    before, after, optimum = map(float, re.search(r"mean reward ([\d.]+) -> ([\d.]+); .*: ([\d.]+)", proc.stdout).groups())
    assert after > before  # the reward was optimised; how close it lands to p* is the toy benchmarks' question
