"""What limits the MNIST teacher: FID of its 30-step samples against held-out images as the
reference's DSM steps grow, with and without the EMA of its weights, at CFG scales 1, 1.5 and 2.

    python benchmarks/mnist_teacher.py 16,32 1500,4000,7000     # UNet widths, DSM steps at which to evaluate

Class-index conditioning, 2x2 patch folding, batch 64, Adam lr 3e-3 (a cosine decay per segment
between evaluations: a probe, not the benchmark's recipe), EMA 0.999; FIDs in the evaluation
classifier's features as in ``didr bench mnist``, 1,000 teacher samples (digits in turn) against
the 1,000 held-out images. Prints one line per (steps, EMA or raw weights, w); results in
results/mnist.md.
"""

import sys
import time

import torch

from didr.data.digits import load_digit_data
from didr.diffusion.denoiser import GuidedDenoiser
from didr.diffusion.schedules import make_schedule
from didr.eval import image_metrics as im
from didr.experiments.config import DigitsConfig
from didr.experiments.digits.prompts import ClassPrompts
from didr.experiments.digits.rewards import train_classifier
from didr.experiments.digits.stages import teacher_sample, train_reference
from didr.models.unet import UNetDenoiser
from didr.rewards.digits import DigitCNN
from didr.train.ema import EMA


def main() -> None:
    torch.set_num_threads(1)
    channels = tuple(int(v) for v in sys.argv[1].split(","))
    checkpoints = [int(v) for v in sys.argv[2].split(",")]
    lr = float(sys.argv[3]) if len(sys.argv) > 3 else 3e-3
    data = load_digit_data("mnist", 0.2, 0)
    schedule = make_schedule("vp-cosine")
    t0 = time.perf_counter()
    classifier = DigitCNN(10, 24, 32, 28)
    train_classifier(classifier, data.train_x, data.train_y, steps=300, seed=2)
    real = im.features(classifier, data.test_x)
    print("real train vs heldout FID", im.frechet_distance(im.features(classifier, data.train_x[:1000]), real), flush=True)
    torch.manual_seed(0)
    net = UNetDenoiser(schedule, 10, channels, 2, data.sigma_data())
    averaged = EMA(net, 0.999)
    ema = averaged.module
    prompts = ClassPrompts(10)
    gen = torch.Generator().manual_seed(12345)
    z, c = torch.randn(1000, *data.shape, generator=gen), torch.arange(1000) % 10
    done = 0
    for total in checkpoints:
        cfg = DigitsConfig(dataset="mnist", channels=list(channels), patch=2, ref_steps=total - done, ref_batch=64, ref_lr=lr, ref_ema=0.999)
        train_reference(net, data, prompts, cfg, seed=done, progress=False, ema=averaged)  # continues training
        done = total
        for name, model in (("ema", ema), ("raw", net)):
            for w in (1.0, 1.5, 2.0):
                x = teacher_sample(GuidedDenoiser(model.eval(), w, model.null_cond), z, c, 30).clamp(-1, 1)
                f = im.features(classifier, x)
                p, r = im.knn_precision_recall(real, f)
                print(f"ch {channels} steps {total} {name} w {w}: FID {im.frechet_distance(f, real):.2f} P {p:.3f} R {r:.3f} "
                      f"acc {im.prompt_accuracy(classifier, x, c):.3f}  [{time.perf_counter() - t0:.0f}s]", flush=True)
            model.train()


if __name__ == "__main__":
    main()
