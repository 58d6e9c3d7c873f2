"""Image features from a model the user has (CLIP, DINOv2, the FID Inception), and the fidelity
metrics on them (KID, diversity, drift), each checked against an independent computation."""

import hashlib
import importlib.util
import itertools
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from didr.errors import ConfigError, DidrError, ModelLoadError
from didr.eval.features import DINOV2_PREPROCESS, IMAGENET_MEAN, IMAGENET_STD, load_features
from didr.eval.image_metrics import kernel_inception_distance, mean_pairwise_distance, paired_drift
from didr.eval.inception import FID_WEIGHTS_FILE, FIDInceptionV3, InceptionPreprocess
from didr.rewards.clip import load_pickscore
from didr.testing.tiny import save_tiny_clip

# ---------------------------------------------------------------- metrics


def kid_by_loops(x, y):
    """Unbiased MMD^2 with k(a, b) = (a . b / d + 1)^3, term by term in Python floats."""
    m, d = len(x), len(x[0])
    k = lambda a, b: (sum(p * q for p, q in zip(a, b)) / d + 1) ** 3  # noqa: E731
    xx = sum(k(x[i], x[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    yy = sum(k(y[i], y[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    xy = sum(k(x[i], y[j]) for i in range(m) for j in range(m)) / m**2
    return xx + yy - 2 * xy


def test_kid_equals_a_double_loop_and_a_hand_computed_value():
    gen = torch.Generator().manual_seed(0)
    a, b = torch.randn(7, 3, generator=gen), torch.randn(7, 3, generator=gen) + 0.5
    mean, std = kernel_inception_distance(a, b, subsets=1, subset_size=100)  # one subset holding every row
    assert mean == pytest.approx(kid_by_loops(a.tolist(), b.tolist()), rel=1e-12) and std == 0.0
    # d = 1, x = {0, 0}, y = {1, 1}: k(0, 0) = 1, k(1, 1) = 8, k(0, 1) = 1, so 1 + 8 - 2 * 1 = 7
    assert kernel_inception_distance(torch.zeros(2, 1), torch.ones(2, 1), subsets=3)[0] == pytest.approx(7.0)


def test_kid_is_near_zero_for_one_distribution_and_grows_with_a_shift():
    gen = torch.Generator().manual_seed(1)
    a, a2 = torch.randn(2000, 8, generator=gen), torch.randn(2000, 8, generator=gen)
    whole = dict(subsets=1, subset_size=2000)
    shifted = [kernel_inception_distance(a, a2 + s, **whole)[0] for s in (0.25, 0.5, 1.0)]
    assert shifted[0] > 0.1 and shifted[0] < shifted[1] < shifted[2]
    # a set with itself: only the diagonal, which the unbiased estimate leaves out of k(x, x') but
    # not of k(x, y), separates it from 0: 2 (mean of k - mean of its diagonal) / (m - 1), O(1/m)
    itself = kernel_inception_distance(a, a, **whole)[0]
    k = (a.double() @ a.double().T / 8 + 1) ** 3
    assert itself == pytest.approx(2 * float(k.mean() - k.diagonal().mean()) / 1999, rel=1e-9)
    assert abs(itself) < 0.1 * shifted[0]
    fresh, fresh_std = kernel_inception_distance(a, a2, subsets=10, subset_size=500)
    assert abs(fresh) < 3 * fresh_std + 1e-3 and abs(fresh) < 0.1 * shifted[0]
    assert shifted[2] == pytest.approx(kernel_inception_distance(a2 + 1.0, a, **whole)[0], rel=1e-9)  # symmetric


def test_kid_subsets_are_drawn_without_replacement_and_seeded():
    gen = torch.Generator().manual_seed(2)
    a, b = torch.randn(50, 4, generator=gen), torch.randn(30, 4, generator=gen)
    assert kernel_inception_distance(a, b, subsets=5, subset_size=20, seed=3) == kernel_inception_distance(a, b, subsets=5, subset_size=20, seed=3)
    assert kernel_inception_distance(a, b, subsets=5, subset_size=20, seed=3) != kernel_inception_distance(a, b, subsets=5, subset_size=20, seed=4)
    # subsets as large as the smaller set: b whole each time, a's subsets vary
    mean, std = kernel_inception_distance(a, b, subsets=4, subset_size=1000)
    assert std > 0 and math.isfinite(mean)
    with pytest.raises(ConfigError, match="same width"):
        kernel_inception_distance(a, b[:, :3])
    with pytest.raises(ConfigError, match="at least 2 rows"):
        kernel_inception_distance(a, b[:1])


def test_mean_pairwise_distance_per_group_on_constructed_points():
    points = torch.tensor([[0.0, 0.0], [0.0, 0.0], [3.0, 4.0], [1.0, 0.0], [0.0, 1.0]])
    groups = ["b", "a", "a", "b", "b"]
    mean, per_group = mean_pairwise_distance(points, groups)
    assert list(per_group) == ["b", "a"]  # first appearance
    assert per_group["a"] == pytest.approx(5.0)
    assert per_group["b"] == pytest.approx((1 + 1 + math.sqrt(2)) / 3)
    assert mean == pytest.approx((5.0 + (2 + math.sqrt(2)) / 3) / 2)
    gen = torch.Generator().manual_seed(3)
    f, labels = torch.randn(12, 5, generator=gen).double(), [i % 3 for i in range(12)]
    brute = [np.mean([float((f[i] - f[j]).norm()) for i, j in itertools.combinations([k for k in range(12) if labels[k] == g], 2)]) for g in range(3)]
    assert list(mean_pairwise_distance(f, labels)[1].values()) == pytest.approx(brute, rel=1e-12)
    assert mean_pairwise_distance(torch.ones(40, 3), [0] * 40) == (0.0, {0: 0.0})  # a collapsed prompt: exactly 0
    with pytest.raises(ConfigError, match="group 'c' has one member"):
        mean_pairwise_distance(points, ["a", "a", "b", "b", "c"])
    with pytest.raises(ConfigError, match="4 group labels for 5 features"):
        mean_pairwise_distance(points, groups[:4])


def test_paired_drift_on_constructed_pairs():
    a = torch.zeros(3, 2)
    b = torch.tensor([[3.0, 4.0], [0.0, 1.0], [0.0, 0.0]])
    mean, each = paired_drift(a, b)
    assert mean == pytest.approx(2.0) and each.tolist() == pytest.approx([5.0, 1.0, 0.0])
    assert paired_drift(b, b)[0] == 0.0
    with pytest.raises(ConfigError, match="paired feature sets of one shape"):
        paired_drift(a, b[:2])


# ---------------------------------------------------------------- CLIP and DINOv2 features


def images(n=3, height=40, width=56, seed=0):
    """Images in [-1, 1] on the uint8 grid, as a saved image has them."""
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, 3, height, width), generator=gen).float() / 127.5 - 1


def sha256(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


def save_tiny_dinov2(folder, seed=0):
    from transformers import Dinov2Config, Dinov2Model

    torch.manual_seed(seed)
    Dinov2Model(Dinov2Config(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, mlp_ratio=2, patch_size=14, image_size=224)).save_pretrained(folder)
    return folder


def test_clip_features_are_the_projected_embeddings_of_the_reward_tower(tmp_path):
    folder = save_tiny_clip(tmp_path / "clip")
    model = load_features(f"clip:{folder}")
    x = images()
    feats = model(x, batch_size=2)
    assert feats.shape == (3, 16) and feats.dtype == torch.float64 and model.dim == 16
    # the same pixels through the reward's own path: PickScore's unit-norm image embeddings
    reward = load_pickscore(folder)
    torch.testing.assert_close(F.normalize(feats, dim=-1).float(), reward.encode_images(x), atol=1e-5, rtol=1e-5)
    d = model.describe()
    assert d["features"] == "clip" and d["weights_sha256"] == {"model.safetensors": sha256(folder / "model.safetensors")}
    assert d["preprocessing"]["source"].startswith("preprocessor_config.json") and d["preprocessing"]["crop"] == [224, 224]
    (folder / "preprocessor_config.json").unlink()
    fallback = load_features(f"clip:{folder}").describe()["preprocessing"]
    assert fallback["source"].startswith("OpenAI CLIP's") and fallback["rounding"] == "round"


def test_dinov2_input_matches_the_transformers_processor():
    from transformers.models.bit.image_processing_pil_bit import BitImageProcessorPil

    x = images(2, 256, 300)  # short side 256 -> 224, width 262, crop offset 19 by either rounding
    processor = BitImageProcessorPil(size={"shortest_edge": 224}, crop_size={"height": 224, "width": 224}, image_mean=list(IMAGENET_MEAN),
                                     image_std=list(IMAGENET_STD), do_center_crop=True)
    from PIL import Image

    pil = [Image.fromarray(((i + 1) * 127.5).round().byte().permute(1, 2, 0).numpy()) for i in x]
    official = processor(pil, return_tensors="pt")["pixel_values"]
    ours = DINOV2_PREPROCESS(x)
    assert ours.shape == official.shape == (2, 3, 224, 224)
    # PIL rounds to 8 bits after each resize pass: one grey level is 1 / 255 / 0.225 = 0.017 here
    assert (ours - official).abs().max() < 0.03 and (ours - official).abs().mean() < 0.01  # a pixel off, or bilinear, is ~1


def test_dinov2_features_are_the_cls_token_after_the_final_norm(tmp_path):
    from transformers import Dinov2Model

    folder = save_tiny_dinov2(tmp_path / "dinov2")
    model = load_features(f"dinov2:{folder}")
    x = images(2, 64, 80)
    feats = model(x)
    reference = Dinov2Model.from_pretrained(folder).eval()
    with torch.no_grad():
        expected = reference(pixel_values=DINOV2_PREPROCESS(x)).pooler_output  # Dinov2Model's pooler: the normed CLS token
    assert feats.shape == (2, 32)
    torch.testing.assert_close(feats, expected.double(), atol=1e-5, rtol=1e-5)
    d = model.describe()
    assert d["dim"] == 32 and d["preprocessing"]["mean"] == list(IMAGENET_MEAN) and d["preprocessing"]["size"] == 224
    assert d["weights_sha256"] == {"model.safetensors": sha256(folder / "model.safetensors")}


def test_features_load_from_the_hub_cache_by_id(tmp_path, hub_cache):
    clip, dino = save_tiny_clip(tmp_path / "clip"), save_tiny_dinov2(tmp_path / "dinov2")
    hub_cache.add_folder("tiny-org/clip", clip)
    hub_cache.add_folder("tiny-org/dinov2", dino)
    x = images(2)
    for kind, local in (("clip", clip), ("dinov2", dino)):
        by_id = load_features(f"{kind}:tiny-org/{kind}")
        torch.testing.assert_close(by_id(x), load_features(f"{kind}:{local}")(x))
        assert by_id.describe()["weights_sha256"] == {"model.safetensors": sha256(local / "model.safetensors")}
        assert by_id.spec == f"{kind}:tiny-org/{kind}"
    with pytest.raises(ModelLoadError, match="config.json of hub repo 'tiny-org/missing' is neither reachable nor cached"):
        load_features("dinov2:tiny-org/missing")


@pytest.mark.parametrize(
    "spec, error, message",
    [
        ("lpips:/models/x", ConfigError, r"unknown image features 'lpips:/models/x': expected clip:PATH_OR_HUB_ID"),
        ("dinov2", ConfigError, r"give the model after the colon"),
        ("clip:{tmp}/nowhere", ModelLoadError, r"clip features .*nowhere: .*nowhere does not exist \(expected a folder holding config.json\)"),
        ("dinov2:{tmp}", ModelLoadError, r"no config.json in"),
        ("inception:{tmp}", ModelLoadError, rf"no {FID_WEIGHTS_FILE} in"),
        ("inception:{tmp}/bad.pth", ModelLoadError, r"bad.pth does not fit the model: \d+ missing"),
    ],
)
def test_bad_specs_are_one_line_errors(tmp_path, spec, error, message):
    torch.save({"fc.weight": torch.zeros(1008, 2048)}, tmp_path / "bad.pth")
    with pytest.raises(error, match=message) as err:
        load_features(spec.format(tmp=tmp_path))
    assert isinstance(err.value, DidrError) and "\n" not in str(err.value)


# ---------------------------------------------------------------- the FID Inception


def random_fid_state(seed=0):
    """Random weights in the released state dict's layout, scaled so that each layer keeps its
    input's spread (He-scaled kernels, BatchNorm near identity): the features depend on the image."""
    gen = torch.Generator().manual_seed(seed)
    state = {}
    for key, value in sorted(FIDInceptionV3().state_dict().items()):
        noise = torch.randn(value.shape, generator=gen) if value.is_floating_point() else value
        if key.endswith("num_batches_tracked"):
            state[key] = value
        elif key.endswith("running_var"):
            state[key] = torch.rand(value.shape, generator=gen) + 0.5
        elif key.endswith("bn.weight"):
            state[key] = 1 + 0.1 * noise
        elif value.ndim == 1:  # BatchNorm biases and means, the classifier's bias
            state[key] = 0.1 * noise
        else:
            state[key] = noise * (2.0 / value[0].numel()) ** 0.5
    return state


def fid_input():
    return torch.rand(2, 3, 360, 420, generator=torch.Generator().manual_seed(1)) * 2 - 1  # larger than 299: the resize downsamples


def projections(features):
    """The features on 8 fixed random directions: a small fingerprint of all 2048 values."""
    return features.double() @ torch.randn(2048, 8, generator=torch.Generator().manual_seed(2)).double()


#: projections(pytorch-fid's InceptionV3([3]) pool3 features) of fid_input() with random_fid_state()
#: loaded, computed with pytorch-fid 0.3.0 on torchvision 0.28.0 (test_matches_pytorch_fid reruns it
#: wherever both are installed); Mixed_7c's pool as an average moves them by 12, an antialiased resize by 29
PYTORCH_FID_PROJECTIONS = [
    [9.6459589, 71.454129, 23.241889, -71.61013, 54.314256, 114.80902, 9.3109714, -148.84677],
    [10.473446, 69.54535, 21.289781, -72.156348, 53.955025, 115.80616, 11.708613, -147.7771],
]


def test_inception_features_match_pytorch_fid_on_random_weights(tmp_path):
    path = tmp_path / "inception.pth"
    torch.save(random_fid_state(), path)
    model = load_features(f"inception:{path}")
    feats = model(fid_input())
    assert feats.shape == (2, 2048) and feats.dtype == torch.float64
    torch.testing.assert_close(projections(feats), torch.tensor(PYTORCH_FID_PROJECTIONS, dtype=torch.float64), atol=1e-3, rtol=1e-4)
    d = model.describe()
    assert d["weights_sha256"] == {"inception.pth": sha256(path)} and d["dim"] == 2048 and d["preprocessing"]["size"] == 299


def test_inception_loads_the_release_by_name_from_a_folder_or_the_hub(tmp_path, hub_cache):
    state = {k: torch.zeros_like(v) for k, v in FIDInceptionV3().state_dict().items()}
    (tmp_path / "fid").mkdir()
    torch.save(state, tmp_path / "fid" / FID_WEIGHTS_FILE)
    assert load_features(f"inception:{tmp_path / 'fid'}").describe()["weights_sha256"] == {FID_WEIGHTS_FILE: sha256(tmp_path / "fid" / FID_WEIGHTS_FILE)}
    hub_cache.add("tiny-org/fid", {FID_WEIGHTS_FILE: (tmp_path / "fid" / FID_WEIGHTS_FILE).read_bytes()})
    assert load_features(f"inception:tiny-org/fid:{FID_WEIGHTS_FILE}").reference == f"tiny-org/fid:{FID_WEIGHTS_FILE}"


def test_inception_input_is_pytorch_fids():
    x = fid_input()
    unit = ((x + 1) / 2).clamp(0, 1)
    expected = 2 * F.interpolate(unit, size=(299, 299), mode="bilinear", align_corners=False) - 1
    torch.testing.assert_close(InceptionPreprocess()(x), expected)


@pytest.mark.skipif(importlib.util.find_spec("pytorch_fid") is None, reason="pytorch-fid (and torchvision) not installed")
def test_matches_pytorch_fid():
    from pytorch_fid import inception

    state = random_fid_state()
    inception.load_state_dict_from_url = lambda *args, **kwargs: state  # the architecture alone: random weights
    reference = inception.InceptionV3([3]).eval()
    ours = FIDInceptionV3().eval()
    ours.load_state_dict(state)
    x = fid_input()
    with torch.no_grad():
        expected = reference(((x + 1) / 2).clamp(0, 1))[0].flatten(1)
        torch.testing.assert_close(ours(InceptionPreprocess()(x)), expected, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(projections(expected), torch.tensor(PYTORCH_FID_PROJECTIONS, dtype=torch.float64), atol=1e-3, rtol=1e-4)
