"""Every backbone against its own stock diffusers pipeline, on tiny random weights, float32 (the
comparisons are didr.testing.parity's): one- and few-step samples under both re-noising rules, and
the reference's x0 with and without guidance, agree to float32 rounding."""

from __future__ import annotations

import pytest
import torch

from didr.errors import ConfigError
from didr.testing.parity import CASES, Parity

pytest.importorskip("diffusers")
ATOL = 2e-5  # images in [0, 1]; float32 rounding through a few networks


@pytest.fixture(scope="module", params=list(CASES))
def parity(request, tmp_path_factory):
    return Parity.build(CASES[request.param], tmp_path_factory.mktemp(request.param) / "pipe")


def test_samples_and_reference_predictions_are_the_stock_pipelines(parity):
    comparisons = parity.comparisons()
    assert len(comparisons) >= 3
    for name, (ours, theirs) in comparisons.items():
        assert ours.shape == theirs.shape and ours.std() > 1e-3  # images, not a constant
        torch.testing.assert_close(ours, theirs, rtol=0, atol=ATOL, msg=lambda m, name=name: f"{parity.case.kind} {name}: {m}")


def test_a_different_seed_or_time_gives_a_different_image(parity):
    """The comparison can fail: the pipeline's image from another seed, or another time, is not didr's."""
    ours, _ = parity.samples(parity.case.one_step, "ddim", seed=3)
    assert (ours - parity.stock_images(parity.case.one_step, "ddim", seed=4)).abs().max() > 10 * ATOL
    assert (ours - parity.stock_images([0.5], "ddim", seed=3)).abs().max() > 10 * ATOL


def test_flow_pipelines_refuse_fresh_noise_between_steps(parity):
    """The flow pipelines draw their scheduler's noise from the global stream, not from `generator`:
    a run that asks for it is refused by name, since its images could not be reproduced."""
    if not parity.bb.family.flow:
        pytest.skip("UNet pipelines hand their generator to the scheduler")
    with pytest.raises(ConfigError, match="generator_renoise"):
        parity.config(generator_renoise="fresh").validate()
