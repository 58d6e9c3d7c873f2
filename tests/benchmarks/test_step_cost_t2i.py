"""The GPU step-cost benchmark runs end to end on the CPU at tiny shapes: every configuration of
its grid is built and stepped through the real loop, and the recorded table divides each DIDR
row by the DI++ row of the same setting."""


import pytest

from tests.helpers import load_benchmark

pytest.importorskip("diffusers")


def load_script():
    return load_benchmark("step_cost_t2i")


def test_grid_pairs_every_didr_row_with_its_di_plus_plus_row():
    bench = load_script()
    rows = bench.grid(["sdxl", "zimage"], "axes")
    didr = [r for r in rows if r.method == "didr"]
    assert {r.batch for r in didr} == {1, 2, 4} and {r.drp_steps for r in didr} == {1, 2, 4}
    assert {r.lora for r in didr} == {True, False} and {r.checkpointing for r in didr} == {True, False}
    assert all(r.baseline in rows and rows.index(r.baseline) < rows.index(r) for r in didr)
    assert len(bench.grid(["sdxl"], "full")) == 36 + 12


def test_tiny_run_records_a_table_with_command_machine_and_date(tmp_path):
    bench = load_script()
    out = bench.main(["--tiny", "--backbones", "sdxl", "--grid", "smoke", "--warmup", "0", "--repeats", "1", "--ta-updates", "1",
                      "--cache", str(tmp_path / "cache"), "--out", str(tmp_path / "step_cost.md")])
    text = out.read_text()
    assert "Command: `python benchmarks/step_cost_t2i.py --tiny" in text and "Machine: " in text and "Date: " in text
    rows = [line for line in text.splitlines() if line.startswith("| sdxl")]
    assert len(rows) == len(bench.grid(["sdxl"], "smoke")) == 4
    for line in rows:
        cells = [c.strip() for c in line.strip("|").split("|")]
        assert float(cells[1]) > 0 and float(cells[2]) > 0  # seconds and memory were measured
        assert cells[3] == "-"  # no estimate for the tiny pipelines
        if "DI++" in cells[0]:
            assert cells[4] == "1.00"
        else:
            assert float(cells[4]) > 0  # a ratio against its DI++ row
