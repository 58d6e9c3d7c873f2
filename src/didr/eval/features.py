"""Image features for fidelity metrics, from a model the user has.

:func:`load_features` loads one from a spec ``KIND:REF``, where REF is a local path or a hub
reference (:mod:`didr.hub`), and returns a :class:`FeatureModel`: images (N, 3, H, W) in [-1, 1]
to features (N, D) in float64, with :meth:`FeatureModel.describe` recording what was loaded (the
sha256 of each weight file, the input size and normalisation) for a report's protocol block.

- ``clip:REF``: a transformers CLIP folder (a reward's PickScore or CLIP-H, say). Features are the
  vision tower's projected image embeddings (``image_embeds``, not normalised), the input made by
  the reward's own torch preprocessing (:mod:`didr.rewards.preprocess`): the folder's
  ``preprocessor_config.json``, else OpenAI CLIP's resize, centre crop and normalisation.
- ``dinov2:REF``: a transformers ``Dinov2Model`` folder. Features are the CLS token of the last
  hidden state (after the final layer norm, DINOv2's ``x_norm_clstoken``); input: bicubic resize
  of the short side to 224, centre crop 224, ImageNet normalisation.
- ``inception:REF``: the FID Inception-v3 weights as pytorch-fid releases them
  (``pt_inception-2015-12-05-6726825d.pth``, a file or a folder holding it), built by
  :mod:`didr.eval.inception` without torchvision; features are pool3 (2048).
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
from torch import Tensor, nn

from didr.errors import ConfigError, ModelLoadError
from didr.eval.inception import FEATURE_DIM, FID_WEIGHTS_FILE, FIDInceptionV3, InceptionPreprocess
from didr.files import sha256_file
from didr.hub import WEIGHT_FILES, check_folder_ref, freeze, from_pretrained, load_state_dict, load_strict, resolve_file, resolve_weight_file
from didr.rewards.clip import clip_vision_config
from didr.rewards.preprocess import ImagePreprocess, preprocess_from_config, torchvision_clip_preprocess

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
#: DINOv2's evaluation input as image-generation metrics use it: short side to 224, centre crop 224
DINOV2_PREPROCESS = ImagePreprocess(size=224, crop=(224, 224), mean=IMAGENET_MEAN, std=IMAGENET_STD, mode="bicubic", rounding="round")
FEATURE_KINDS = ("clip", "dinov2", "inception")


@dataclass
class FeatureModel:
    """A frozen image network and its input pipeline: ``model(images)`` gives (N, D) float64 features.

    ``embed(network, pixel_values)`` is the network's feature read-out; ``weights`` maps each
    weight file's name to its sha256; ``preprocessing`` describes ``preprocess`` in words and numbers.
    """

    name: str
    reference: str
    network: nn.Module
    preprocess: Callable[[Tensor], Tensor]
    embed: Callable[[nn.Module, Tensor], Tensor]
    dim: int
    weights: dict[str, str]
    preprocessing: dict[str, Any] = field(default_factory=dict)
    output: str = ""

    @property
    def spec(self) -> str:
        return f"{self.name}:{self.reference}"

    @property
    def device(self) -> torch.device:
        return next(self.network.parameters()).device

    def describe(self) -> dict[str, Any]:
        """What a protocol block records: the spec, weight hashes, input pipeline and output."""
        return {"features": self.name, "reference": self.reference, "weights_sha256": dict(self.weights), "dim": self.dim,
                "preprocessing": dict(self.preprocessing), "output": self.output}

    @torch.no_grad()
    def __call__(self, images: Tensor, batch_size: int = 32) -> Tensor:
        if images.ndim != 4 or images.shape[1] != 3:
            raise ConfigError(f"{self.name} features take images of shape (N, 3, H, W) in [-1, 1], got {tuple(images.shape)}")
        if batch_size < 1:
            raise ConfigError(f"feature batch size must be >= 1, got {batch_size}")
        parts = [self.embed(self.network, self.preprocess(x.to(self.device))).double().cpu() for x in images.split(batch_size)]
        return torch.cat(parts) if parts else torch.zeros(0, self.dim, dtype=torch.float64)


def load_features(spec: str, device: Any = None) -> FeatureModel:
    """The feature model a spec ``clip:REF``, ``dinov2:REF`` or ``inception:REF`` names (float32, frozen)."""
    kind, sep, ref = str(spec).partition(":")
    if kind not in FEATURE_KINDS:
        raise ConfigError(f"unknown image features {spec!r}: expected {', '.join(f'{k}:PATH_OR_HUB_ID' for k in FEATURE_KINDS)}")
    if not sep or not ref:
        raise ConfigError(f"image features {spec!r}: give the model after the colon, e.g. {kind}:/models/{kind}")
    loader = {"clip": _load_clip, "dinov2": _load_dinov2, "inception": _load_inception}[kind]
    return loader(ref, device)


def weight_hashes(ref: str, what: str) -> dict[str, str]:
    """{file name: sha256} of a transformers folder's (or hub repo's) weight file, or of each shard its index names."""
    first = resolve_file(ref, WEIGHT_FILES, what)
    if not first.name.endswith(".index.json"):
        return {first.name: sha256_file(first)}
    try:
        shards = sorted(set(json.loads(first.read_text())["weight_map"].values()))
    except (ValueError, KeyError, AttributeError):
        raise ModelLoadError(f"{what}: {first} is not a weight index (no weight_map)") from None
    return {s: sha256_file(resolve_file(ref, [s], what)) for s in shards}


def _describe_preprocess(preprocess: Any, source: str) -> dict[str, Any]:
    return {"source": source, **{k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(preprocess).items()}}


def _clip_preprocess(ref: str, image_size: int, what: str) -> tuple[ImagePreprocess, str]:
    """The folder's own processor config if it has one, else OpenAI CLIP's pipeline at the model's size."""
    try:
        config = resolve_file(ref, ["preprocessor_config.json"], f"{what} image processor")
    except ModelLoadError:
        return torchvision_clip_preprocess(image_size), f"OpenAI CLIP's (no preprocessor_config.json in {ref})"
    return preprocess_from_config(json.loads(config.read_text())), f"preprocessor_config.json of {ref}"


def _clip_image_embeds(network: nn.Module, pixels: Tensor) -> Tensor:
    return network(pixel_values=pixels.to(network.dtype)).image_embeds


def _load_clip(ref: str, device: Any) -> FeatureModel:
    from transformers import CLIPVisionModelWithProjection

    what = f"clip features {ref}"
    check_folder_ref(ref, what, "config.json")
    config = clip_vision_config(ref, what)
    network = freeze(from_pretrained(CLIPVisionModelWithProjection, ref, what, config=config), device)
    preprocess, source = _clip_preprocess(ref, config.image_size, what)
    return FeatureModel("clip", ref, network, preprocess, _clip_image_embeds, int(config.projection_dim), weight_hashes(ref, what),
                        _describe_preprocess(preprocess, source), "the vision tower's projected image embedding (image_embeds), not normalised")


def _dinov2_cls(network: nn.Module, pixels: Tensor) -> Tensor:
    return network(pixel_values=pixels.to(network.dtype)).last_hidden_state[:, 0]


def _load_dinov2(ref: str, device: Any) -> FeatureModel:
    from transformers import Dinov2Model

    what = f"dinov2 features {ref}"
    check_folder_ref(ref, what, "config.json")
    network = freeze(from_pretrained(Dinov2Model, ref, what), device)
    return FeatureModel("dinov2", ref, network, DINOV2_PREPROCESS, _dinov2_cls, int(network.config.hidden_size), weight_hashes(ref, what),
                        _describe_preprocess(DINOV2_PREPROCESS, "DINOv2 evaluation: short side 224, centre crop 224, ImageNet mean/std"),
                        "the CLS token of the last hidden state, after the final layer norm")


def _inception_pool3(network: nn.Module, pixels: Tensor) -> Tensor:
    return network(pixels)


def _load_inception(ref: str, device: Any) -> FeatureModel:
    what = f"inception features {ref}"
    path = resolve_weight_file(ref, what, (FID_WEIGHTS_FILE,))
    network = FIDInceptionV3()
    load_strict(network, load_state_dict(path, what), what, path)
    preprocess = InceptionPreprocess()
    source = "pytorch-fid: bilinear resize to 299 (no antialiasing), [0, 1] scaled to [-1, 1]"
    return FeatureModel("inception", ref, freeze(network, device), preprocess, _inception_pool3, FEATURE_DIM, {path.name: sha256_file(path)},
                        _describe_preprocess(preprocess, source), "pool3, the 2048 outputs of the final average pool")
