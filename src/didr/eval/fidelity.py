"""Fidelity, diversity and drift of ``didr eval``'s generators in the features of a model the user has
(``--features``: :func:`didr.eval.features.load_features`).

- Fidelity to a reference set (``--reference``): a generator of the evaluation (the teacher, drawn
  on the same prompts and seeds) or a folder of real images. The Fréchet distance between Gaussian
  fits of the two feature sets, and KID (unbiased, polynomial kernel; mean and std over subsets).
  Both are biased upwards for small sets, FD much more than KID: compare them only at equal counts,
  which the protocol's prompts and seeds fix.
- Diversity: per prompt, the mean feature distance between its seeds' images, averaged over prompts.
- Drift from the base: the mean feature distance between the images of the same prompt and seed.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import torch
from torch import Tensor

from didr.errors import ConfigError
from didr.eval.image_metrics import frechet_distance, kernel_inception_distance, mean_pairwise_distance, paired_drift
from didr.eval.score import find_images, load_image


def image_features(model, files: Sequence[Path], batch: int = 32) -> Tensor:
    """Features (N, D) of image files, in batches of one size."""
    out = []
    for start in range(0, len(files), batch):
        images = [load_image(f) for f in files[start:start + batch]]
        if len({im.shape for im in images}) > 1:
            out += [model(im[None]) for im in images]
        else:
            out.append(model(torch.stack(images)))
    return torch.cat(out).double()


def reference_features(model, reference: str, generator_features: dict[str, Tensor]) -> tuple[Tensor, dict[str, Any]]:
    """The reference set's features: one of the generators' (by name), or a folder of images."""
    if reference in generator_features:
        return generator_features[reference], {"generator": reference}
    folder = Path(reference)
    if not folder.is_dir():
        raise ConfigError(f"--reference {reference!r}: neither one of the generators ({', '.join(generator_features)}) nor a folder of images")
    files = find_images(folder)
    return image_features(model, files), {"folder": str(folder), "images": len(files)}


def fidelity_metrics(features: dict[str, Tensor], reference: Tensor | None, seeds: int, base: str, kid_subsets: int = 100) -> dict[str, dict]:
    """Per generator: FD and KID to the reference, diversity across seeds, feature drift from the base."""
    out = {}
    for name, f in features.items():
        entry: dict[str, Any] = {"images": len(f)}
        if reference is not None:
            kid, kid_std = kernel_inception_distance(f, reference, subsets=kid_subsets)
            entry.update(fd=frechet_distance(f, reference), kid=kid, kid_std=kid_std)
        if seeds > 1:
            entry["diversity"] = mean_pairwise_distance(f, [i // seeds for i in range(len(f))])[0]
        if name != base and features[base].shape == f.shape:
            entry["feature_drift_from_base"] = paired_drift(f, features[base])[0]
        out[name] = entry
    return out
