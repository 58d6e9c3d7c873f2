"""Datasets that ship offline inside installed packages (no download at run time), and prompt sets."""

from didr.data.digits import DATASETS, DigitData, load_digit_data
from didr.data.prompt_sets import PromptSet, load_prompt_set

__all__ = ["DATASETS", "DigitData", "PromptSet", "load_digit_data", "load_prompt_set"]
