"""FSDP2 as users launch it (``accelerate launch --config_file configs/accelerate/fsdp2.yaml
--num_processes 2 -m didr train``) on CPU processes with gloo, for the tiny SDXL (generator and TA as
LoRA adapters over one shared, frozen base) and the tiny Z-Image (a fully trained generator of its
own, a LoRA TA over the reference), through ``benchmarks/sharded_training.py``'s runs.

Asserted: the log states two sharded processes, and each holds about half of every network's
parameters and of each optimiser's state; the loss and the exported generator (the loop's tensors
and the diffusers folder) match one process accumulating the same two micro-batches per step,
within SAME_BATCH_ATOL and LOSS_RTOL (the order of the sums differs); kill -9 of the launch after a
checkpoint, then a resume on two processes, ends bit-identical to the uninterrupted run; that
checkpoint resumed on one process (grad_accum 2), and a one-process checkpoint resumed on two, end
within the same tolerances.
"""

from __future__ import annotations

import pytest

from tests.helpers import load_benchmark

pytest.importorskip("diffusers")
#: max |difference| of any exported weight (the tiny networks' weights are O(0.1 - 1))
SAME_BATCH_ATOL = 1e-5
#: max |difference| of a logged loss, relative to the largest |value| it takes in the run (the
#: generator's surrogate loss is a sum of terms of that size that cancel)
LOSS_RTOL = 1e-5


def load_script():
    return load_benchmark("sharded_training")


def assert_same_batch(c: dict) -> None:
    assert c["weights"] <= SAME_BATCH_ATOL
    for k in ("generator_loss", "ta_loss"):
        assert c[k] <= LOSS_RTOL * c[f"{k}_scale"], k


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["sdxl", "zimage"])
def test_two_sharded_processes_hold_half_match_one_and_resume(tmp_path, kind):
    r = load_script().measure(kind, tmp_path)
    assert r["start"].startswith("world_size=2 parallelism=fsdp2 backend=gloo device=cpu")
    assert {h["what"].split(" (")[0] for h in r["held"]} >= {"network 0", "generator optimiser", "ta optimiser"}
    for h in r["held"]:
        assert all(abs(x / h["total"] - 0.5) < 0.05 for x in h["held"]), h
    assert_same_batch(r["one process"])
    assert r["resumed after kill -9"]["identical"] and r["resumed after kill -9"]["log"]
    assert_same_batch(r["2 -> 1 processes"])
    assert_same_batch(r["1 -> 2 processes"])
