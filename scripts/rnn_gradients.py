"""Gradient flow in recurrent networks: the experiments of docs/derivations/rnn.md as plots.

    python scripts/rnn_gradients.py [--out figures/rnn] [--adding-T 50] [--steps 1600]
                                    [--quick]

Writes (PNG, matplotlib Agg) into --out:
  state_grad_norms.png   ||dL/dh_t|| against t for RNN, LSTM, GRU (L = <r, h_T>, T = 60),
                         PyTorch's default init and with the LSTM forget / GRU update gate
                         opened (gate bias +3)
  linear_rnn_growth.png  ||dL/dh_0|| against T for the linear RNN of paper 002 Q9 (grows
                         like rho^T, rho = 1.1512), an orthogonal W_h (constant) and the
                         same orthogonal W_h with tanh (vanishes)
  clipping.png           SGD on the exploding linear RNN, with and without clip_grad_norm_
  adding_problem.png     the adding problem at --adding-T: tanh RNN vs GRU vs LSTM
and prints the numbers (also saved as results.txt). Everything is seeded.
"""
import argparse
import os
import sys
import time

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
import refdl  # noqa: E402
from refdl import nn  # noqa: E402
from refdl.data.sequences import adding_problem  # noqa: E402
from refdl.nn.utils import clip_grad_norm_  # noqa: E402
from refdl.optim import SGD, Adam  # noqa: E402
from refdl.train import NonFiniteLossError, check_finite, run_steps  # noqa: E402

W_H = np.array([[-0.64, -0.06, -1.12],
                [-0.56, 0.28, -0.76],
                [0.62, -1.66, -0.2]])
LINES = []


def say(s):
    print(s, flush=True)
    LINES.append(s)


def make(kind, *args, **kw):
    if kind == "RNN":
        return nn.RNN(*args, **kw)
    return getattr(nn, kind)(*args, **kw)


def state_grad_norms(out_dir):
    T, H = 60, 32
    x = np.random.default_rng(1).standard_normal((T, 8, 4))
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for kind, bias, style in [("RNN", 0, "k-"), ("LSTM", 0, "b-"), ("GRU", 0, "r-"),
                              ("LSTM", 3, "b--"), ("GRU", 3, "r--")]:
        refdl.manual_seed(0)
        layer = make(kind, 4, H).to(np.float64)
        if bias:
            layer.bias_ih_l0.data[H:2 * H] += bias
        layer.retain_state_grads = True
        out, _ = layer(x)
        d = np.zeros_like(out)
        d[-1] = np.random.default_rng(1).standard_normal(d[-1].shape)
        layer.backward(d)
        g = np.linalg.norm(layer.state_grads[0].reshape(T, -1), axis=1)
        label = kind + (f" (gate bias +{bias})" if bias else " (default init)")
        ax.semilogy(np.arange(1, T + 1), g, style, label=label)
        say(f"state grads  {label:26s} ||dL/dh_1|| / ||dL/dh_T|| = {g[0] / g[-1]:.3e}  "
            f"(per step {(g[0] / g[-1]) ** (1 / (T - 1)):.4f})")
    ax.set_xlabel("t")
    ax.set_ylabel("||dL/dh_t||")
    ax.set_title("Gradient reaching step t, L = <r, h_T>, T = 60")
    ax.legend()
    fig.tight_layout()
    fig.savefig(os.path.join(out_dir, "state_grad_norms.png"), dpi=120)
    plt.close(fig)


def dh0_norm(W, T, nonlinearity="identity"):
    refdl.manual_seed(0)
    rnn = nn.RNN(1, 3, nonlinearity=nonlinearity).to(np.float64)
    rnn.weight_hh_l0.data[...] = W
    x = np.random.default_rng(0).standard_normal((T, 1, 1))
    out, h = rnn(x, np.zeros((1, 1, 3)))
    _, dh0 = rnn.backward(np.zeros_like(out), np.ones_like(h))
    return float(np.linalg.norm(dh0))


def linear_rnn_growth(out_dir):
    rho = np.max(np.abs(np.linalg.eigvals(W_H)))
    Q, _ = np.linalg.qr(np.random.default_rng(0).standard_normal((3, 3)))
    Ts = np.arange(1, 121)
    paper = np.array([dh0_norm(W_H, T) for T in Ts])
    orth = np.array([dh0_norm(Q, T) for T in Ts])
    orth_tanh = np.array([dh0_norm(Q, T, "tanh") for T in Ts])
    rate = np.exp(np.polyfit(Ts[40:], np.log(paper[40:]), 1)[0])
    say(f"linear RNN   spectral radius of W_h = {rho:.6f}; fitted growth rate of "
        f"||dL/dh_0|| = {rate:.6f}; at T = 120: {paper[-1]:.3e}")
    say(f"orthogonal   identity: ||dL/dh_0|| = {orth[-1]:.12f} at T = 120 (sqrt 3 = "
        f"{np.sqrt(3):.12f}); tanh: {orth_tanh[-1]:.3e}")
    fig, ax = plt.subplots(figsize=(7, 4.5))
    ax.semilogy(Ts, paper, "r-", label="paper 002 W_h, identity")
    ax.semilogy(Ts, paper[60] * rho ** (Ts - Ts[60]), "k:", label=f"rho^T, rho = {rho:.4f}")
    ax.semilogy(Ts, orth, "b-", label="orthogonal W_h, identity")
    ax.semilogy(Ts, orth_tanh, "g-", label="orthogonal W_h, tanh")
    ax.set_xlabel("T")
    ax.set_ylabel("||dL/dh_0||, L = <1, h_T>")
    ax.legend()
    fig.tight_layout()
    fig.savefig(os.path.join(out_dir, "linear_rnn_growth.png"), dpi=120)
    plt.close(fig)


def clipping(out_dir, steps=100, T=50):
    curves = {}
    for max_norm in (None, 1.0):
        refdl.manual_seed(0)
        rng = np.random.default_rng(0)
        rnn, head = nn.RNN(1, 3, nonlinearity="identity").to(np.float64), \
            nn.Linear(3, 1).to(np.float64)
        rnn.weight_hh_l0.data[...] = W_H
        params = list(rnn.parameters()) + list(head.parameters())
        opt = SGD(params, lr=0.01)
        losses = []

        def step(i, _):
            x = rng.standard_normal((T, 16, 1))
            y = x[-5:].sum(axis=0)
            out, _ = rnn(x)
            p = head(out[-1])
            losses.append(check_finite(np.mean((p - y) ** 2), i))
            opt.zero_grad()
            d = np.zeros_like(out)
            d[-1] = head.backward(2 * (p - y) / p.size)
            rnn.backward(d)
            if max_norm:
                clip_grad_norm_(params, max_norm)
            opt.step()
            return losses[-1]

        with np.errstate(over="ignore", invalid="ignore"):
            try:
                run_steps(step, steps)
            except NonFiniteLossError as e:      # no clipping: the loss diverges (shown)
                losses.append(e.value)
        curves[max_norm] = losses
        say(f"clipping     max_norm={max_norm}: {len(losses)} steps, first loss "
            f"{losses[0]:.3e}, last {losses[-1]:.3e}")
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for k, style in ((None, "r-o"), (1.0, "b-")):
        v = np.array(curves[k])
        ax.semilogy(np.arange(len(v))[np.isfinite(v)], v[np.isfinite(v)], style,
                    label="no clipping (then inf)" if k is None else "clip_grad_norm_(1.0)")
    ax.set_xlabel("SGD step")
    ax.set_ylabel("MSE")
    ax.set_title("Linear RNN with paper 002's W_h, T = 50")
    ax.legend()
    fig.tight_layout()
    fig.savefig(os.path.join(out_dir, "clipping.png"), dpi=120)
    plt.close(fig)


def adding(out_dir, T, steps, H=32, batch=64):
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for kind, style in (("RNN", "k-"), ("GRU", "r-"), ("LSTM", "b-")):
        refdl.manual_seed(0)
        rng = np.random.default_rng(0)
        rnn, head = make(kind, 2, H, batch_first=True), nn.Linear(H, 1)
        params = list(rnn.parameters()) + list(head.parameters())
        opt = Adam(params, lr=1e-2)
        t0 = time.time()

        def step(i, _):
            x, y = adding_problem(batch, T, rng)
            out, _ = rnn(x)
            p = head(out[:, -1])
            loss = check_finite(np.mean((p - y) ** 2), i)
            opt.zero_grad()
            d = np.zeros_like(out)
            d[:, -1] = head.backward(2 * (p - y) / p.size)
            rnn.backward(d)
            clip_grad_norm_(params, 1.0)
            opt.step()
            return loss

        losses = run_steps(step, steps)["loss"]
        x, y = adding_problem(1000, T, np.random.default_rng(123))
        test = float(np.mean((head(rnn(x)[0][:, -1]) - y) ** 2))
        say(f"adding T={T:<4d}{kind:5s} test MSE after {steps} steps = {test:.4f} "
            f"(chance 0.1667)  [{time.time() - t0:.0f} s]")
        smooth = np.convolve(losses, np.ones(25) / 25, mode="valid")
        ax.semilogy(smooth, style, label=f"{kind} (test MSE {test:.4f})")
    ax.axhline(1 / 6, color="gray", ls=":", label="predict 1 (MSE 1/6)")
    ax.set_xlabel("Adam step (batch 64)")
    ax.set_ylabel("training MSE (running mean of 25)")
    ax.set_title(f"Adding problem, T = {T}, hidden 32")
    ax.legend()
    fig.tight_layout()
    fig.savefig(os.path.join(out_dir, "adding_problem.png"), dpi=120)
    plt.close(fig)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default="figures/rnn")
    ap.add_argument("--adding-T", type=int, default=50)
    ap.add_argument("--steps", type=int, default=1600)
    ap.add_argument("--quick", action="store_true", help="adding problem with T=10, 300 steps")
    args = ap.parse_args(argv)
    os.makedirs(args.out, exist_ok=True)
    state_grad_norms(args.out)
    linear_rnn_growth(args.out)
    clipping(args.out)
    if args.quick:
        adding(args.out, 10, 300)
    else:
        adding(args.out, args.adding_T, args.steps)
    with open(os.path.join(args.out, "results.txt"), "w") as f:
        f.write("\n".join(LINES) + "\n")
    print(f"figures written to {args.out}/")


if __name__ == "__main__":
    main()
