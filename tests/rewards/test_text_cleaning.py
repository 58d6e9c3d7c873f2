"""Prompt cleaning against what the official open_clip tokenizer makes of the same prompts."""

from __future__ import annotations

import pytest

from didr.rewards.text_cleaning import open_clip_clean
from didr.testing.reward_models import OPEN_CLIP_CLEANED


@pytest.mark.parametrize(("raw", "cleaned"), OPEN_CLIP_CLEANED.items(), ids=range(len(OPEN_CLIP_CLEANED)))
def test_open_clip_clean_matches_open_clip(raw, cleaned):
    assert open_clip_clean(raw) == cleaned


def test_cleaning_is_idempotent():
    for cleaned in OPEN_CLIP_CLEANED.values():
        assert open_clip_clean(cleaned) == cleaned
