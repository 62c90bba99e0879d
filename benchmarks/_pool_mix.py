"""Two thread pools on two cores: a training step whose Linear products use OpenBLAS's
pool (above threads.GEMM_GRAIN, the default) against the same step with every Linear
product on one BLAS thread (GEMM_GRAIN raised out of reach), at 2 threads.

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python benchmarks/_pool_mix.py

Two workloads: a small CNN with a 4096 -> 1024 classifier (its convolutions run on the
kernels' OpenMP team, so OpenBLAS's workers, which spin for about 0.1 s after a
multi-threaded product, share the cores with the team), and a 4-layer GPT (every product
on OpenBLAS's pool: Linear's and attention's). Minimum over rounds of the median step.

Each runs twice, in child processes: with OpenBLAS's default thread timeout (its workers
spin 2**28 cycles, about 0.1 s, before they sleep) and with refdl's
(threads.BLAS_THREAD_TIMEOUT), which ``import refdl`` sets when it loads NumPy. OpenBLAS
reads OPENBLAS_THREAD_TIMEOUT once, when it loads, so the setting needs a process each.
"""
import os
import subprocess
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import refdl                                          # noqa: E402
from refdl import nn, threads                         # noqa: E402
from refdl.models.gpt import GPT                      # noqa: E402
from _cases import best_median                        # noqa: E402


def cnn_step(rng):
    net = nn.Sequential(nn.Conv2d(3, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                        nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                        nn.Flatten(), nn.Linear(64 * 8 * 8, 1024), nn.ReLU(),
                        nn.Linear(1024, 10))
    x = rng.standard_normal((64, 3, 32, 32)).astype(np.float32)
    y = rng.integers(0, 10, 64)
    loss, opt = nn.CrossEntropyLoss(), refdl.optim.SGD(net.parameters(), lr=0.01)

    def step():
        opt.zero_grad()
        loss(net(x), y)
        net.backward(loss.backward(), input_grad=False)
        opt.step()
    return step, 15


def gpt_step(rng):
    m = GPT(vocab_size=512, block_size=128, n_layer=4, n_head=4, n_embd=256)
    idx, tgt = rng.integers(0, 512, (16, 128)), rng.integers(0, 512, (16, 128))
    loss, opt = nn.CrossEntropyLoss(), refdl.optim.SGD(m.parameters(), lr=0.01)

    def step():
        opt.zero_grad()
        logits = m(idx)
        loss(logits.reshape(-1, 512), tgt.reshape(-1))
        m.backward(loss.backward().reshape(logits.shape))
        opt.step()
    return step, 5


def main():
    print(f"load average {os.getloadavg()[0]:.2f}; ms per step, 2 threads")
    for label, timeout in (("OpenBLAS's default thread timeout (2**28 cycles)", 28),
                           (f"refdl's thread timeout (2**{threads.BLAS_THREAD_TIMEOUT} "
                            "cycles)", threads.BLAS_THREAD_TIMEOUT)):
        print(label, flush=True)
        env = dict(os.environ, OPENBLAS_THREAD_TIMEOUT=str(timeout))
        subprocess.run([sys.executable, os.path.abspath(__file__), "--child"], env=env,
                       check=True)
    print(f"load average {os.getloadavg()[0]:.2f}")


def child():
    refdl.keep_freed_memory()
    refdl.manual_seed(0)
    rng = np.random.default_rng(0)
    assert threads.blas_thread_timeout() == (int(os.environ["OPENBLAS_THREAD_TIMEOUT"]),
                                             "user")
    refdl.set_num_threads(2)
    grain = threads.GEMM_GRAIN
    for name, make in (("CNN with a 4096->1024 classifier", cnn_step),
                       ("GPT, 4 layers of 256, batch 16 x 128", gpt_step)):
        step, reps = make(rng)
        out = []
        for label, g in (("Linear on the BLAS pool", grain), ("Linear on one thread", 1 << 60)):
            threads.GEMM_GRAIN = g
            step()
            out.append(f"{label} {best_median(step, reps):7.1f}")
        threads.GEMM_GRAIN = grain
        print(f"  {name:38s} " + "   ".join(out), flush=True)


if __name__ == "__main__":
    child() if "--child" in sys.argv[1:] else main()
