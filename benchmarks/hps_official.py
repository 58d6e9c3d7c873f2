"""HPSv2.1 in didr against the official scorer, hpsv2's ``img_score.score``, on the same random weights.

Needs a venv with the official packages (hpsv2, open_clip_torch, torchvision, ftfy) besides
didr's own dependencies; it says so and exits 0 where they are missing. From the repository root:

    PYTHONPATH=src OFFICIAL_VENV/bin/python benchmarks/hps_official.py --out benchmarks/results/hps_official.md
    PYTHONPATH=src OFFICIAL_VENV/bin/python benchmarks/hps_official.py --golden tests/rewards/data/hps_letterbox_golden.json

It builds HPSv2's model with hpsv2's own ``create_model_and_transforms`` exactly as ``img_score``
does (``light_augmentation=True``), but with random weights: ViT-H-14's layout at reduced width
and depth by default, the real size with ``--full``. The weights are saved as an HPS checkpoint
(``{"state_dict": ...}``, float32 and a float16 copy), then every score is computed twice: by
``hpsv2.img_score.score`` (PIL image in, its preprocessing, open_clip's tokenizer, cosine) and
by ``didr.rewards.load_hpsv2`` (tensor in [-1, 1], x100). The text side uses CLIP's real BPE
vocabulary: open_clip's ``bpe_simple_vocab_16e6.txt.gz`` written out as a transformers tokenizer.

Cases: real photographs of several aspect ratios (scikit-image), prompts that the official
tokenizer cleans (curly quotes, HTML entities, full-width characters, ligatures, whitespace,
upper case, mojibake), and the float16 checkpoint. ``--golden`` instead writes the official
preprocessing of a few photographs as a compact fingerprint for the test suite.
"""

from __future__ import annotations

import argparse
import datetime
import gzip
import importlib.metadata as md
import json
import os
import shlex
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

PROMPTS = [
    "Van Gogh's starry night",
    "Van Gogh’s starry night",  # curly apostrophe
    "“a quoted” cat",  # curly double quotes
    "salt &amp; pepper on a plate",
    "fish &amp;amp; chips",  # escaped twice
    "&lt;b&gt;bold&lt;/b&gt; letters",
    "ＦＵＬＬ－ＷＩＤＴＨ ｃａｔ ２０２４",
    "a ﬁne ﬂower ﬁeld",  # ligatures
    "  a   red\tcup \n\n of   coffee  ",
    "A PHOTO OF AN ASTRONAUT",
    "cafÃ© au lait",  # UTF-8 read as Latin-1
    "A highly detailed photograph of a red fox in a snowy forest at dawn, " * 6,  # past 77 tokens: truncated
]
PROMPT = "a photo of a cat"
#: ViT-H-14's layout (head width 80 in vision, 64 in text, patch 14 at 224) at reduced width and depth
REDUCED = {
    "embed_dim": 256,
    "vision_cfg": {"image_size": 224, "layers": 4, "width": 320, "head_width": 80, "patch_size": 14},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 256, "heads": 4, "layers": 4},
}


def photos() -> dict[str, np.ndarray]:
    """Real photographs, landscape, portrait, square, and one smaller than 224 (upscaled)."""
    from skimage import data

    chelsea = data.chelsea()
    return {
        "astronaut 512x512": data.astronaut(),
        "chelsea 300x451": chelsea,
        "coffee 400x600": data.coffee(),
        "rocket 427x640": data.rocket(),
        "chelsea portrait 451x300": np.ascontiguousarray(chelsea.transpose(1, 0, 2)),
        "chelsea crop 100x150": np.ascontiguousarray(chelsea[100:200, 150:300]),
    }


def to_model_range(array: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(array).permute(2, 0, 1)[None].float() / 127.5 - 1


def official_packages() -> bool:
    try:
        import hpsv2.img_score  # noqa: F401
        import open_clip  # noqa: F401
        import torchvision  # noqa: F401
    except Exception as err:  # ImportError, or torchvision's operator error beside a mismatched torch
        print(f"skipped: the official packages do not import here ({type(err).__name__}: {err}); "
              "run in a venv with hpsv2, open_clip_torch, torchvision and ftfy (see the module docstring)")
        return False
    return True


def build_official(full: bool):
    """hpsv2's model and transform, built as img_score.initialize_model builds them (no pretrained download)."""
    from hpsv2.src.open_clip import create_model_and_transforms, factory

    name = "ViT-H-14"
    if not full:
        name = "ViT-H-14-reduced"
        factory._MODEL_CONFIGS[name] = REDUCED
    torch.manual_seed(0)
    model, _, preprocess_val = create_model_and_transforms(
        name, None, precision="amp", device="cpu", jit=False, force_quick_gelu=False, force_custom_text=False,
        force_patch_dropout=False, force_image_size=None, pretrained_image=False, image_mean=None, image_std=None,
        light_augmentation=True, aug_cfg={}, output_dict=True, with_score_predictor=False, with_region_predictor=False,
    )
    return model.eval(), preprocess_val, factory.get_model_config(name)


def didr_config(cfg: dict) -> dict:
    """The open_clip config as the transformers CLIPConfig dict that didr.rewards.hps expects."""
    from didr.rewards.hps import VIT_H_14

    v, t = cfg["vision_cfg"], cfg["text_cfg"]
    out = json.loads(json.dumps(VIT_H_14))
    out["projection_dim"] = cfg["embed_dim"]
    out["vision_config"].update(hidden_size=v["width"], intermediate_size=4 * v["width"], num_hidden_layers=v["layers"],
                                num_attention_heads=v["width"] // v["head_width"], image_size=v["image_size"], patch_size=v["patch_size"])
    out["text_config"].update(hidden_size=t["width"], intermediate_size=4 * t["width"], num_hidden_layers=t["layers"],
                              num_attention_heads=t["heads"], max_position_embeddings=t["context_length"], vocab_size=t["vocab_size"])
    return out


def save_bpe_tokenizer(folder: Path) -> Path:
    """open_clip's BPE file (the vocabulary of OpenAI CLIP and of laion's CLIP-H) as a transformers CLIPTokenizer."""
    import open_clip
    from hpsv2.src.open_clip.tokenizer import bytes_to_unicode
    from transformers import CLIPTokenizer

    bpe = Path(open_clip.__file__).parent / "bpe_simple_vocab_16e6.txt.gz"
    merges = gzip.open(bpe).read().decode("utf-8").split("\n")[1 : 49152 - 256 - 2 + 1]
    merges = [tuple(m.split()) for m in merges]
    vocab = list(bytes_to_unicode().values())
    vocab = vocab + [v + "</w>" for v in vocab] + ["".join(m) for m in merges] + ["<|startoftext|>", "<|endoftext|>"]
    tokenizer = CLIPTokenizer(vocab={v: i for i, v in enumerate(vocab)}, merges=merges, model_max_length=77)
    tokenizer.save_pretrained(folder)
    return folder


def official_scores(images, prompt: str, checkpoint: Path) -> list[float]:
    """``hpsv2.img_score.score`` on PIL images: loads ``checkpoint`` into the prepared model each call, as it does."""
    from hpsv2 import img_score

    return [100 * float(s) for s in img_score.score(list(images), prompt, cp=str(checkpoint))]


def didr_tokens(reward, prompts: list[str]) -> torch.Tensor:
    """The token ids didr feeds the text tower (its own tokenize path where it has one)."""
    if hasattr(reward, "tokenize"):
        return reward.tokenize(prompts)["input_ids"]
    return reward.tokenizer(prompts, padding=True, truncation=True, max_length=77, return_tensors="pt")["input_ids"]


def same_tokens(official: torch.Tensor, ours: torch.Tensor, eot: int) -> bool:
    """Equal up to and including the end-of-text token (the padding after it differs and is never attended)."""
    o = official[: int((official == eot).nonzero()[0]) + 1].tolist()
    return ours[: len(o)].tolist() == o


def compare(args) -> str:
    from hpsv2 import img_score
    from hpsv2.src.open_clip import get_tokenizer
    from PIL import Image

    from didr.rewards import load_hpsv2

    t0 = time.time()
    model, preprocess_val, cfg = build_official(args.full)
    img_score.model_dict.update(model=model, preprocess_val=preprocess_val)
    work = Path(tempfile.mkdtemp(prefix="hps_official_"))
    checkpoints = {"fp32": work / "fp32" / "HPS_v2.1_compressed.pt", "fp16": work / "fp16" / "HPS_v2.1_compressed.pt"}
    for (_, path), dtype in zip(checkpoints.items(), (torch.float32, torch.float16)):
        path.parent.mkdir()
        torch.save({"state_dict": {k: v.to(dtype) for k, v in model.state_dict().items()}}, path)
    tok = save_bpe_tokenizer(work / "tokenizer")
    config = didr_config(cfg)
    print(f"built and saved in {time.time() - t0:.0f} s")

    pics = photos()
    pil = [Image.fromarray(a) for a in pics.values()]
    square = pics["astronaut 512x512"]
    rows_img, rows_txt, rows_16 = [], [], []
    with torch.no_grad():
        for kind, path in checkpoints.items():  # one didr model at a time: the full size takes 4 GB
            reward = load_hpsv2(path, config=config, tokenizer=tok)
            print(f"didr model from the {kind} checkpoint: {next(reward.model.parameters()).dtype}")
            official = official_scores(pil, PROMPT, path)
            ours = [float(reward(to_model_range(a), [PROMPT])[0]) for a in pics.values()]
            rows = rows_img if kind == "fp32" else rows_16
            rows.extend(zip(pics, official, ours))
            for name, off, d in zip(pics, official, ours):
                print(f"{kind} {name:28s} official {off:9.4f}  didr {d:9.4f}  |diff| {abs(off - d):.2e}")
            if kind == "fp32":
                official_tok, ours_tok = get_tokenizer("ViT-H-14")(PROMPTS), didr_tokens(reward, PROMPTS)
                for i, prompt in enumerate(PROMPTS):
                    off = official_scores([Image.fromarray(square)], prompt, path)[0]
                    d = float(reward(to_model_range(square), [prompt])[0])
                    same = same_tokens(official_tok[i], ours_tok[i], 49407)
                    rows_txt.append((prompt, off, d, same))
                    print(f"{shown(prompt):48s} official {off:9.4f}  didr {d:9.4f}  |diff| {abs(off - d):.2e}  tokens {'same' if same else 'DIFFER'}")
            del reward
    return report(args, cfg, rows_img, rows_txt, rows_16, time.time() - t0)


def shown(prompt: str, width: int = 48) -> str:
    """A prompt's repr, shortened for a table."""
    text = repr(prompt)
    return text if len(text) <= width else f"{text[: width - 12]}... ({len(prompt)} chars)"


def versions() -> str:
    names = ("torch", "torchvision", "open_clip_torch", "hpsv2", "ftfy", "transformers", "Pillow", "scikit-image")
    found = []
    for n in names:
        try:
            found.append(f"{n} {md.version(n)}")
        except md.PackageNotFoundError:
            found.append(f"{n} (missing)")
    return ", ".join(found)


def report(args, cfg, rows_img, rows_txt, rows_16, seconds: float) -> str:
    from didr.eval.report import Provenance
    from didr.rewards import hps

    size = "ViT-H-14 (full size)" if args.full else f"ViT-H-14 layout at reduced size: {json.dumps(cfg)}"
    head = "| case | official | didr | abs diff |\n|---|---:|---:|---:|\n"
    lines = [
        f"## {args.label}",
        "",
        *Provenance.here(f"PYTHONPATH={os.environ.get('PYTHONPATH', '')} {Path(sys.executable).parent.parent.name}/bin/python {shlex.join(sys.argv)}",
                         f"didr from `{Path(hps.__file__).resolve().parents[2]}`; CPU cores shared with other work; {seconds:.0f} s in all").lines(),
        f"Packages: {versions()}",
        f"Model: random weights (open_clip's initialisation, seed 0), {size}",
        "",
        "Scores are 100 x cos(image, text): `hpsv2.img_score.score` (x100) against `didr.rewards.load_hpsv2`.",
        "",
        f"### Photographs, prompt {PROMPT!r}, float32 checkpoint",
        "",
        head + "\n".join(f"| {n} | {o:.4f} | {d:.4f} | {abs(o - d):.2e} |" for n, o, d in rows_img),
        "",
        "### Prompts, on astronaut 512x512 (square), float32 checkpoint",
        "",
        "| prompt | official | didr | abs diff | token ids |\n|---|---:|---:|---:|---|\n"
        + "\n".join(f"| `{shown(p)}` | {o:.4f} | {d:.4f} | {abs(o - d):.2e} | {'same' if s else 'differ'} |" for p, o, d, s in rows_txt),
        "",
        f"### Float16 checkpoint, prompt {PROMPT!r}",
        "",
        head + "\n".join(f"| {n} | {o:.4f} | {d:.4f} | {abs(o - d):.2e} |" for n, o, d in rows_16),
        "",
        "Largest differences: photographs {:.2e}, prompts {:.2e}, float16 checkpoint {:.2e}; prompts tokenised alike: {}/{}.".format(
            max(abs(o - d) for _, o, d in rows_img), max(abs(o - d) for _, o, d, _ in rows_txt),
            max(abs(o - d) for _, o, d in rows_16), sum(s for *_, s in rows_txt), len(rows_txt)),
        "",
    ]
    return "\n".join(lines)


def golden(path: Path) -> None:
    """The official transform's output on photographs, as row and column means and sampled pixels (compact, exact)."""
    from PIL import Image

    _, preprocess_val, _ = build_official(full=False)
    out = {"source": f"hpsv2 img_score preprocess_val (light_augmentation=True); {versions()}; {datetime.date.today().isoformat()}",
           "photos": {}}
    gen = torch.Generator().manual_seed(0)
    for name, array in photos().items():
        x = preprocess_val(Image.fromarray(array))
        idx = torch.stack([torch.randint(0, n, (64,), generator=gen) for n in x.shape], dim=1)
        out["photos"][name] = {
            "input_shape": list(array.shape),
            "input_sum": int(array.astype(np.int64).sum()),
            "row_means": [[round(float(v), 6) for v in c] for c in x.mean(2)],
            "col_means": [[round(float(v), 6) for v in c] for c in x.mean(1)],
            "samples": [[*map(int, i), round(float(x[tuple(i)]), 6)] for i in idx],
        }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(out) + "\n")
    print(f"wrote {path}")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--full", action="store_true", help="the real ViT-H-14 size (about 1B parameters; minutes on a CPU)")
    parser.add_argument("--out", type=Path, help="append the report to this markdown file")
    parser.add_argument("--label", default="didr against hpsv2 1.2.0", help="the report's heading")
    parser.add_argument("--golden", type=Path, help="write the official preprocessing fingerprint for the tests instead")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    if not official_packages():
        return 0
    if args.golden:
        golden(args.golden)
        return 0
    text = compare(args)
    print(text)
    if args.out:
        with args.out.open("a") as f:
            f.write(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
