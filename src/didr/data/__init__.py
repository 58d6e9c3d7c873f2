"""Datasets that ship offline inside installed packages (no download at run time)."""

from didr.data.digits import DATASETS, DigitData, load_digit_data

__all__ = ["DATASETS", "DigitData", "load_digit_data"]
