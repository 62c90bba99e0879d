"""Train the small ResNet (or LeNet-5 / the small VGG) on the 8x8 digits; print test accuracy.

Each epoch prints the accuracy on a validation split (144 of the 1,437 training images,
held out); the test images are evaluated once, after training, and nothing is chosen on
them.

    python examples/train_resnet_digits.py [--model resnet_small|lenet5|vgg_small]
                                           [--epochs 15] [--seed 0] [--lr 1e-3]

1,437 training and 360 test images (scikit-learn's digits, bundled, no download; the
split of refdl.data.load_digits). Adam (lr 1e-3 -> cosine), batch 32, cross-entropy.
Measured (seed 0, 15 epochs, training on all 1,437 images before the validation split was
held out): resnet_small 99.2 %, vgg_small 98.9 %, lenet5 93.3 %
(96.7 % with --lr 3e-3) test accuracy. The same through the command line:
``refdl train --model resnet_small --optimizer adam --lr 1e-3 --scheduler cosine
--epochs 10`` gives 98.6 %, ``--model lenet5 --lr 3e-3 --epochs 15`` 97.8 %.
"""
import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))   # run from a checkout

import refdl  # noqa: E402
from refdl import nn
from refdl.train import check_finite, run_steps


def digits(seed=0, test_size=360):
    try:
        from refdl.data.digits import load_digits
        return load_digits(test_size=test_size, seed=seed, layout="image")
    except ImportError:                                   # same split, by hand
        from sklearn.datasets import load_digits as sk
        d = sk()
        x = (d.images.astype(np.float32) / np.float32(16.0)).reshape(-1, 1, 8, 8)
        y = d.target.astype(np.int64)
        perm = np.random.default_rng(seed).permutation(len(y))
        te, tr = perm[:test_size], perm[test_size:]
        return x[tr], y[tr], x[te], y[te]


def build(name, seed):
    refdl.manual_seed(seed)
    if name == "resnet_small":
        from refdl.models.resnet import ResNetSmall
        return ResNetSmall(num_classes=10, input_shape=(1, 8, 8))
    if name == "lenet5":
        from refdl.models.lenet import LeNet5
        return LeNet5(num_classes=10, input_shape=(1, 8, 8))
    if name == "vgg_small":
        from refdl.models.vgg import VGGSmall
        return VGGSmall(num_classes=10, input_shape=(1, 8, 8))
    raise SystemExit(f"unknown model {name!r}")


def accuracy(model, x, y, batch=256):
    model.eval()
    pred = np.concatenate([model(x[i:i + batch]).argmax(axis=1) for i in range(0, len(x), batch)])
    return float(np.mean(pred == y))


def train(name="resnet_small", epochs=15, seed=0, lr=1e-3, batch=32, verbose=True,
          val_fraction=0.1):
    from refdl.optim import Adam
    xtr, ytr, xte, yte = digits()
    hold = np.random.default_rng([seed, 12345]).permutation(len(ytr))
    n_val = int(round(val_fraction * len(ytr)))
    xval, yval = xtr[hold[:n_val]], ytr[hold[:n_val]]      # the validation split
    xtr, ytr = xtr[hold[n_val:]], ytr[hold[n_val:]]
    model = build(name, seed)
    opt = Adam(model.parameters(), lr=lr)
    criterion = nn.CrossEntropyLoss()
    rng = np.random.default_rng(seed)
    steps = epochs * int(np.ceil(len(xtr) / batch))
    done = [0]                                  # steps taken, for the cosine decay
    t0 = time.perf_counter()

    def step(i, idx):
        for group in opt.param_groups:                 # cosine learning-rate decay
            group["lr"] = lr * 0.5 * (1 + np.cos(np.pi * done[0] / steps))
        loss = check_finite(criterion(model(xtr[idx]), ytr[idx]), i)
        opt.zero_grad()
        model.backward(criterion.backward())
        opt.step()
        done[0] += 1
        return {"loss": loss, "n": len(idx)}

    for epoch in range(1, epochs + 1):
        model.train()
        perm = rng.permutation(len(xtr))
        h = run_steps(step, (perm[i:i + batch] for i in range(0, len(xtr), batch)))
        total = 0.0
        for loss, n in zip(h["loss"], h["n"]):
            total += loss * n
        if verbose:
            print(f"epoch {epoch:2d}  train loss {total / len(xtr):.4f}  "
                  f"validation accuracy {accuracy(model, xval, yval):.4f}  "
                  f"({time.perf_counter() - t0:.0f} s)", flush=True)
    return model, accuracy(model, xte, yte)


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="resnet_small")
    ap.add_argument("--epochs", type=int, default=15)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--lr", type=float, default=1e-3)
    a = ap.parse_args()
    _, acc = train(a.model, a.epochs, a.seed, a.lr)
    print(f"{a.model}: test accuracy {acc:.4f} on 360 held-out digits (evaluated once, "
          "after training)")
