"""The video U-Net of paper 004 Q3, trained as a reconstruction auto-encoder.

    python examples/video_unet.py [--steps 300] [--batch 4] [--base 16] [--lr 1e-3]

Input: generated moving-shapes videos (refdl.data.video, no download), 10 frames of
32x32 RGB, as (N, 3, 10, 32, 32). Model: refdl.models.unet.video_unet() (N = 3 encoder
blocks of M = 2 3x3x3 convolutions, (1, 2, 2) max-pooling, up-convolutions, skip
concatenation). Loss: MSE between the output and the input video (paper 004 Q3(e)).
Prints the summary with every intermediate and skip shape, then trains until the loss
has fallen tenfold from its first value (or --steps), printing the loss as it goes.
"""
import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))   # run from a checkout

import refdl  # noqa: E402
from refdl.data.video import moving_shapes
from refdl.models.unet import video_unet
from refdl.optim import Adam
from refdl.train import check_finite, run_steps


def main(steps=300, batch=4, base=16, lr=1e-3, n_videos=64, seed=0, target=10.0):
    refdl.manual_seed(seed)
    model = video_unet(base_channels=base)
    print("Shapes of one forward pass (batch 1):")
    for name, shape in model.shape_table((1, 3, 10, 32, 32)):
        print(f"  {name:<34s} {shape}")
    refdl.summary(model, (1, 3, 10, 32, 32))
    videos = moving_shapes(n_videos, frames=10, size=32, channels=3,
                           generator=np.random.default_rng(seed))
    opt = Adam(model.parameters(), lr=lr)
    rng = np.random.default_rng(seed + 1)
    first, t0, smooth = None, time.perf_counter(), None

    def train_step(step, _):
        nonlocal first, smooth
        x = videos[rng.choice(n_videos, batch, replace=False)]
        d = model(x) - x
        loss = check_finite(np.mean(d * d), step)
        opt.zero_grad()
        model.backward((2.0 / d.size) * d)
        opt.step()
        first = loss if first is None else first
        smooth = loss if smooth is None else 0.8 * smooth + 0.2 * loss
        if step == 1 or step % 10 == 0:
            print(f"step {step:4d}  mse {loss:.5f}  (smoothed {smooth:.5f}, first/now "
                  f"{first / smooth:.1f}x)  {time.perf_counter() - t0:.0f} s", flush=True)
        return loss

    def fell(step, _):
        return step >= 10 and smooth <= first / target

    done = len(run_steps(train_step, steps, until=fell).get("loss", []))
    if done and fell(done, None):
        print(f"reconstruction loss fell {first / smooth:.1f}-fold "
              f"({first:.5f} -> {smooth:.5f}) in {done} steps")
        return first, smooth, done
    print(f"stopped after {steps} steps: {first:.5f} -> {smooth:.5f} "
          f"({first / smooth:.1f}-fold)")
    return first, smooth, steps


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--base", type=int, default=16)
    ap.add_argument("--lr", type=float, default=1e-3)
    a = ap.parse_args()
    main(a.steps, a.batch, a.base, a.lr)
