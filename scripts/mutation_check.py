#!/usr/bin/env python
"""Break one thing at a time and see whether the tests notice (not run in CI).

Each mutant replaces one exact snippet of a library file (a sign, a factor, a transposed
matrix, a default), runs the tests that should catch it, and restores the file, also
when interrupted. A mutant is *caught* when pytest fails, *missed* when it passes.

    python scripts/mutation_check.py                # all mutants, a markdown table
    python scripts/mutation_check.py rnn-T gan-2x   # only these
    python scripts/mutation_check.py --list

Run from the project root on a clean tree (it refuses to patch a file with uncommitted
changes). Every mutant's snippet must occur exactly once in its file; a snippet that no
longer matches (the code moved on) is reported as 'stale', not silently skipped.
"""
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
EXAM = ["tests/test_exam_actloss.py", "tests/test_exam_attn.py", "tests/test_exam_autograd.py",
        "tests/test_exam_conv.py", "tests/test_exam_diff.py", "tests/test_exam_gen.py",
        "tests/test_exam_norm.py", "tests/test_exam_optim.py", "tests/test_exam_rnn.py",
        "tests/test_exam_ux.py"]
GC = ["tests/test_gradcheck_safeguards.py"]
DEF = ["tests/test_defaults.py"]

# (id, file, old snippet, new snippet, tests to run, what it breaks)
MUTANTS = [
    # -- the gradient checker ------------------------------------------------------------
    ("gc-zero", "refdl/gradcheck.py",
     'problems.append("a zero upstream gradient gave a non-zero gradient")', "pass",
     GC, "zero-upstream check disabled"),
    ("gc-stream", "refdl/gradcheck.py",
     'return np.random.default_rng([int(seed), {"projection": 1, "forward": 2}[purpose], 0x9E37])',
     "return np.random.default_rng(int(seed))", GC,
     "projection drawn from the caller's default stream"),
    ("gc-floor-up", "refdl/gradcheck.py", "tiny = max(1e-3 * scale, 1e-12)",
     "tiny = max(1e-1 * scale, 1e-12)", GC, "small-entry floor raised to 1e-1 * scale"),
    ("gc-floor-off", "refdl/gradcheck.py", "tiny = max(1e-3 * scale, 1e-12)",
     "tiny = 1e-12", GC, "small-entry floor removed"),
    ("gc-kink", "refdl/gradcheck.py",
     "ok = abs(a_k - c_s) < rtol * max(abs(a_k) + abs(c_s), 1e-3 * scale)",
     "ok = abs(a_k - c_s) <= 1e-5 * max(abs(a_k), abs(c_s), 1e-3 * scale)", GC,
     "kink excuse at 1e-5 for smooth curved functions (the old rule)"),
    ("gc-accum", "refdl/gradcheck.py",
     'problems.append(f"gradient of {n} does not accumulate',
     'None and problems.append(f"gradient of {n} does not accumulate', GC,
     "accumulation check disabled"),
    ("gc-repeat", "refdl/gradcheck.py", "        if not same:\n", "        if False:\n", GC,
     "repeatability check disabled"),
    ("gc-2nd-order", "refdl/gradcheck.py",
     "gflat[k] = (8 * (vals[0] - vals[1]) - (vals[2] - vals[3])) / (12 * eps)",
     "gflat[k] = (vals[0] - vals[1]) / (2 * eps)", GC, "numeric gradient second-order"),
    ("gc-rtol", "refdl/gradcheck.py", "RTOL = 1e-7", "RTOL = 1e-4", GC,
     "default rtol loosened to 1e-4"),
    # -- layer defaults ------------------------------------------------------------------
    ("def-norm-first", "refdl/nn/transformer_encoder.py",
     "layer_norm_eps=1e-5, batch_first=False, norm_first=False, bias=True,\n                 dtype",
     "layer_norm_eps=1e-5, batch_first=False, norm_first=True, bias=True,\n                 dtype",
     DEF, "TransformerEncoderLayer norm_first=True"),
    ("def-tf-dropout", "refdl/nn/transformer_encoder.py",
     "def __init__(self, d_model, nhead, dim_feedforward=2048, dropout=0.1,",
     "def __init__(self, d_model, nhead, dim_feedforward=2048, dropout=0.0,", DEF,
     "TransformerEncoderLayer dropout 0"),
    ("def-tf-eps", "refdl/nn/transformer_encoder.py",
     "                 layer_norm_eps=1e-5, batch_first=False, norm_first=False",
     "                 layer_norm_eps=1e-6, batch_first=False, norm_first=False", DEF,
     "TransformerEncoderLayer layer_norm_eps 1e-6"),
    ("def-tf-eps-ignored", "refdl/nn/transformer_encoder.py",
     'setattr(self, f"norm{i}", LayerNorm(d_model, eps=layer_norm_eps, bias=bias))',
     'setattr(self, f"norm{i}", LayerNorm(d_model, eps=1e-6, bias=bias))', DEF,
     "TransformerEncoderLayer ignores eps"),
    ("def-tf-nf-ignored", "refdl/nn/transformer_encoder.py", "self.norm_first = bool(norm_first)",
     "self.norm_first = True", DEF, "TransformerEncoderLayer ignores norm_first"),
    ("def-tf-attn-drop", "refdl/nn/transformer_encoder.py",
     "self.self_attn = MultiheadAttention(d_model, nhead, dropout=dropout, bias=bias,",
     "self.self_attn = MultiheadAttention(d_model, nhead, dropout=0.0, bias=bias,", DEF,
     "TransformerEncoderLayer: no dropout on the attention weights"),
    ("def-bn-momentum", "refdl/nn/batchnorm.py",
     "def __init__(self, num_features, eps=1e-5, momentum=0.1, affine=True,",
     "def __init__(self, num_features, eps=1e-5, momentum=0.01, affine=True,", DEF,
     "BatchNorm momentum 0.01"),
    ("def-bn-eps", "refdl/nn/batchnorm.py",
     "def __init__(self, num_features, eps=1e-5, momentum=0.1, affine=True,",
     "def __init__(self, num_features, eps=1e-3, momentum=0.1, affine=True,", DEF,
     "BatchNorm eps 1e-3"),
    ("def-bn-biased", "refdl/nn/batchnorm.py", "unbiased = var * (m / (m - 1))",
     "unbiased = var", DEF + ["tests/test_exam_norm.py"], "BatchNorm running var biased"),
    ("def-leaky", "refdl/nn/activation.py", "def __init__(self, negative_slope=0.01,",
     "def __init__(self, negative_slope=0.2,", DEF, "LeakyReLU slope 0.2"),
    ("def-softplus", "refdl/nn/activation.py", "def __init__(self, beta=1.0, threshold=20.0):",
     "def __init__(self, beta=1.0, threshold=30.0):", DEF, "Softplus threshold 30"),
    ("def-gelu", "refdl/nn/activation.py", 'def __init__(self, approximate="none"):',
     'def __init__(self, approximate="tanh"):', DEF, "GELU tanh by default"),
    ("def-dropout", "refdl/nn/dropout.py", "def __init__(self, p=0.5, inplace=False,",
     "def __init__(self, p=0.1, inplace=False,", DEF, "Dropout p 0.1"),
    ("def-ce-ignore", "refdl/nn/loss.py",
     'def __init__(self, weight=None, ignore_index=-100, reduction="mean", label_smoothing',
     'def __init__(self, weight=None, ignore_index=-1, reduction="mean", label_smoothing',
     DEF, "CrossEntropyLoss ignore_index -1"),
    ("def-pool-stride", "refdl/nn/pooling.py",
     "self.stride = self.kernel_size if stride is None",
     "self.stride = (1,) * len(self.kernel_size) if stride is None", DEF,
     "pooling stride defaults to 1"),
    ("def-count-pad", "refdl/nn/pooling.py",
     "        self.count_include_pad = bool(count_include_pad)",
     "        self.count_include_pad = False", DEF, "AvgPool ignores count_include_pad"),
    ("def-ln-eps", "refdl/nn/normalization.py",
     "def __init__(self, normalized_shape, eps=1e-5,",
     "def __init__(self, normalized_shape, eps=1e-6,", DEF, "LayerNorm eps 1e-6"),
    ("def-gn-eps", "refdl/nn/instancenorm.py",
     "def __init__(self, num_groups, num_channels, eps=1e-5, affine=True,",
     "def __init__(self, num_groups, num_channels, eps=1e-6, affine=True,", DEF,
     "GroupNorm eps 1e-6"),
    ("def-in-affine", "refdl/nn/instancenorm.py",
     "def __init__(self, num_features, eps=1e-5, momentum=0.1, affine=False,",
     "def __init__(self, num_features, eps=1e-5, momentum=0.1, affine=True,", DEF,
     "InstanceNorm affine by default"),
    ("def-mha-bf", "refdl/nn/attention.py",
     "add_zero_attn=False, kdim=None, vdim=None, batch_first=False,",
     "add_zero_attn=False, kdim=None, vdim=None, batch_first=True,", DEF,
     "MultiheadAttention batch_first=True"),
    ("def-rnn-relu", "refdl/nn/recurrent.py",
     'def __init__(self, input_size, hidden_size, num_layers=1, nonlinearity="tanh",',
     'def __init__(self, input_size, hidden_size, num_layers=1, nonlinearity="relu",', DEF,
     "RNN nonlinearity relu"),
    ("def-linear-bias-init", "refdl/nn/linear.py",
     "            bound = 1.0 / math.sqrt(self.in_features)",
     "            bound = math.sqrt(6.0 / self.in_features)", DEF,
     "Linear bias bound sqrt(6/fan_in)"),
    ("def-conv-init", "refdl/nn/conv.py",
     "        init.kaiming_uniform_(self.weight, a=math.sqrt(5), generator=generator)",
     "        init.kaiming_uniform_(self.weight, a=0.0, generator=generator)", DEF,
     "Conv weight init kaiming_uniform(a=0) (bound sqrt(6/fan_in))"),
    ("conv-dW-2x", "refdl/nn/conv.py",
     "            self.weight.grad += dW.reshape(self.weight.shape)",
     "            self.weight.grad += 2 * dW.reshape(self.weight.shape)",
     ["tests/test_exam_conv.py"], "Conv weight gradient doubled (conv-5)"),
    ("ce-grad", "refdl/nn/loss.py",
     "            dl = np.exp(logp) * np.sum(a, axis=cdim, keepdims=True) - a",
     "            dl = np.exp(logp) - a", ["tests/test_exam_actloss.py", "tests/test_exam_attn.py", *DEF],
     "CrossEntropy gradient ignores the sum of the target weights"),
    ("kl-diag", "refdl/functional/gaussian.py",
     "+ (mu1 - mu2) ** 2 * np.exp(-np.asarray(logvar2))) - 1.0",
     "+ (mu1 - mu2) ** 2 * np.exp(-np.asarray(logvar2)))",
     ["tests/test_exam_gen.py"], "diagonal Gaussian KL without its -1 (vae-2)"),
    ("matmul-vjp", "refdl/autograd/ops.py", "        db = matmul(transpose(a), g)\n",
     "        db = matmul(transpose(a), g) * 1.5\n", ["tests/test_exam_autograd.py"],
     "autograd MatMul: dB scaled by 1.5 (graph-4, frame-4)"),
    ("pad-symmetric", "refdl/nn/conv.py",
     '_NP_PAD_MODE = {"circular": "wrap", "reflect": "reflect", "replicate": "edge"}',
     '_NP_PAD_MODE = {"circular": "wrap", "reflect": "symmetric", "replicate": "edge"}',
     ["tests/test_padding_modes.py"], "reflect padding computed as np 'symmetric'"),
    # -- the library code the exam tests name --------------------------------------------
    ("rnn-T", "refdl/nn/recurrent_cell.py", "    return da, da, da @ W_hh, None",
     "    return da, da, da @ W_hh.T, None", ["tests/test_exam_rnn.py"],
     "RNN backward with W_hh transposed"),
    ("gan-2x", "refdl/models/gan.py",
     "return c * -sigmoid(-r) / r.size, c * sigmoid(f) / f.size",
     "return 2 * c * -sigmoid(-r) / r.size, 2 * c * sigmoid(f) / f.size",
     ["tests/test_exam_gen.py"], "discriminator loss gradient doubled"),
    ("gan-2x-gan3", "refdl/models/gan.py",
     "return c * -sigmoid(-r) / r.size, c * sigmoid(f) / f.size",
     "return 2 * c * -sigmoid(-r) / r.size, 2 * c * sigmoid(f) / f.size",
     ["tests/test_exam_gen.py::test_gan_3_optimal_conditional_discriminator"],
     "discriminator loss gradient doubled, gan-3's test alone"),
    ("rnn-T-rnn1", "refdl/nn/recurrent_cell.py", "    return da, da, da @ W_hh, None",
     "    return da, da, da @ W_hh.T, None",
     ["tests/test_exam_rnn.py::test_rnn_1_linear_rnn_gradient_explodes_at_rate_1_15"],
     "RNN backward with W_hh transposed, rnn-1's test alone"),
    ("diff-mean-const-2", "refdl/models/diffusion/process.py",
     "        return (xt - b / np.sqrt(1 - ab) * eps) / np.sqrt(a)",
     "        return np.zeros_like(xt) + 0.0 * eps",
     ["tests/test_exam_diff.py::test_diff_2_joint_is_tractable_posterior_needs_the_marginal"],
     "model mean replaced by a constant, diff-2's second test alone"),
    ("gp-formula", "refdl/models/gan.py",
     "u = (c * 2 * self.lam / N) * ((norm - self.center) / safe)[:, None] * v",
     "u = (c * self.lam / N) * ((norm - self.center) / safe)[:, None] * v",
     ["tests/test_exam_gen.py"], "GradientPenalty's dP/dv missing its factor 2"),
    ("diff-xt-sign", "refdl/models/diffusion/process.py",
     "        xt = self._x(\"p_mean_from_eps\", xt, \"xt\")",
     "        xt = -self._x(\"p_mean_from_eps\", xt, \"xt\")",
     ["tests/test_exam_diff.py"], "DDPM mean with x_t's sign flipped"),
    ("diff-mean-const", "refdl/models/diffusion/process.py",
     "        return (xt - b / np.sqrt(1 - ab) * eps) / np.sqrt(a)",
     "        return np.zeros_like(xt) + 0.0 * eps", ["tests/test_exam_diff.py"],
     "model mean replaced by a constant"),
    ("pe-freq", "refdl/nn/attention.py", "w = float(base) ** (-i / d_model)",
     "w = float(base) ** (-2 * i / d_model)", ["tests/test_exam_attn.py"],
     "sinusoidal frequencies with the exponent doubled"),
    ("adam-bc", "refdl/optim/__init__.py", "        bc1 = 1 - b1 ** t",
     "        bc1 = 1.0", ["tests/test_exam_optim.py"], "Adam without bias correction"),
    ("sgd-dampening", "refdl/optim/__init__.py", "                buf += (1 - tau) * g",
     "                buf += (1 - mu) * g", ["tests/test_exam_optim.py"],
     "SGD momentum buffer damped by (1 - mu)"),
    ("sigmoid-d", "refdl/nn/activation.py", "        return y * (1 - y)",
     "        return y * (1 + y)", ["tests/test_exam_actloss.py"], "Sigmoid derivative sign"),
    ("logprob-2x", "refdl/functional/gaussian.py",
     "return -0.5 * (d * LOG_2PI + _logdet(L) + np.sum(z * z, axis=-1))",
     "return -0.5 * (d * LOG_2PI + 2 * _logdet(L) + np.sum(z * z, axis=-1))",
     ["tests/test_exam_gen.py"], "Gaussian log-density: log det counted twice"),
    ("attn-scale", "refdl/nn/attention.py",
     "        scale = 1.0 / math.sqrt(q.shape[-1]) if self.scale is None else float(self.scale)",
     "        scale = 1.0 / q.shape[-1] if self.scale is None else float(self.scale)",
     ["tests/test_exam_attn.py"], "attention scale 1/E instead of 1/sqrt(E)"),
    ("bn-grad", "refdl/nn/batchnorm.py",
     "self.weight.grad += (g * x_hat).sum(axis=axes).astype(self.weight.dtype)",
     "self.weight.grad += (g * x_hat).sum(axis=axes).astype(self.weight.dtype) * 2",
     ["tests/test_exam_norm.py", "tests/test_batchnorm.py"], "BatchNorm dgamma doubled"),
    ("genloss-sign", "refdl/models/gan.py", "            return -c * sigmoid(l)\n",
     "            return c * sigmoid(l)\n", ["tests/test_exam_gen.py"],
     "saturating generator loss gradient sign"),
    ("gp-center", "refdl/models/gan.py", "def __init__(self, critic, lam=10.0, center=1.0):",
     "def __init__(self, critic, lam=10.0, center=0.0):", ["tests/test_exam_gen.py"],
     "GradientPenalty one-sided (center 0) by default"),
    ("conv-pad-adjoint", "refdl/nn/conv.py",
     "        if c.pad_map is not None:                  # adjoint of the index-map padding",
     "        if False:              # adjoint of the index-map padding",
     ["tests/test_padding_modes.py"], "padding's adjoint skipped in conv backward"),
]


def run(mutant, python=sys.executable):
    mid, rel, old, new, tests, what = mutant
    path = ROOT / rel
    text = path.read_text()
    n = text.count(old)
    if n != 1:
        return "stale", f"snippet found {n} times", 0.0
    t0 = time.time()
    try:
        path.write_text(text.replace(old, new))
        r = subprocess.run([python, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider",
                            *tests], cwd=ROOT, capture_output=True, text=True, timeout=900)
        status = "caught" if r.returncode != 0 else "MISSED"
        lines = [ln for ln in r.stdout.splitlines() if ln.startswith("FAILED")]
        detail = lines[0].split(" - ")[0].replace("FAILED ", "") if lines else ""
    finally:
        path.write_text(text)
    return status, detail, time.time() - t0


def main(argv):
    if "--list" in argv:
        for m in MUTANTS:
            print(f"{m[0]:<18} {m[1]:<28} {m[5]}")
        return 0
    chosen = [m for m in MUTANTS if not argv or m[0] in argv]
    files = sorted({m[1] for m in chosen})
    dirty = subprocess.run(["git", "status", "--porcelain", "--", *files], cwd=ROOT,
                           capture_output=True, text=True).stdout.strip()
    if dirty:
        print("uncommitted changes in files to be patched; commit or stash first:\n" + dirty)
        return 2
    print("| # | mutant | file | break | tests run | result | first failing test |")
    print("|---|---|---|---|---|---|---|")
    missed = 0
    for k, m in enumerate(chosen, 1):
        status, detail, secs = run(m)
        missed += status != "caught"
        tests = ", ".join(Path(t).name for t in m[4])
        print(f"| {k} | {m[0]} | {m[1]} | {m[5]} | {tests} | {status} ({secs:.0f} s) | "
              f"{detail} |", flush=True)
    print(f"\n{len(chosen) - missed}/{len(chosen)} caught")
    return 1 if missed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
