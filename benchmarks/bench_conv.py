"""Convolution and pooling benchmarks: refdl's compiled path vs its NumPy path, the GEMM
bound and PyTorch CPU (if installed), float32, all in one run, printed as ratios.

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python benchmarks/bench_conv.py [--threads 2]

Times are medians: every case is timed ``--rounds`` times, interleaved with the other
cases (so a burst of load from other processes hits all of them alike), each round being
the median of several calls. "GEMM bound" is the time NumPy's matmul takes for the same
matrix products the layer does (forward: W (C_out, C_in k) @ cols (C_in k, N L); backward:
two more of the same size), i.e. the work no im2col implementation can avoid.
"""
import argparse
import os
import statistics
import sys
import time
import tracemalloc

parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
parser.add_argument("--rounds", type=int, default=3)
parser.add_argument("--quick", action="store_true", help="fewer calls per round")
parser.add_argument("--no-torch", action="store_true")
args = parser.parse_args()

import numpy as np  # noqa: E402
from threadpoolctl import threadpool_info  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import refdl  # noqa: E402
from refdl import ext, nn  # noqa: E402
from refdl.functional import log_softmax  # noqa: E402

no_grad = getattr(refdl, "no_grad", None) or __import__("contextlib").nullcontext

torch = None
if not args.no_torch:
    try:
        import torch  # noqa: F811
        torch.set_num_threads(args.threads)
    except ImportError:
        torch = None

refdl.set_num_threads(args.threads)     # the BLAS pool and the kernels' OpenMP team


def timeit(fn, min_time=0.2, max_calls=20):
    """Median seconds per call of fn() (after one warm-up call)."""
    fn()
    times = []
    start = time.perf_counter()
    while len(times) < 3 or (time.perf_counter() - start < min_time and len(times) < max_calls):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
        if args.quick and len(times) >= 3:
            break
    return statistics.median(times)


# -- cases ------------------------------------------------------------------------------------

CONVS = [
    # name, layer constructor args, input shape
    ("LeNet conv1 (64,1,28,28)->6@5x5", (nn.Conv2d, 1, 6, 5, {}), (64, 1, 28, 28)),
    ("LeNet conv2 (64,6,14,14)->16@5x5", (nn.Conv2d, 6, 16, 5, {}), (64, 6, 14, 14)),
    ("(64,32,32,32)->64@3x3 p1", (nn.Conv2d, 32, 64, 3, dict(padding=1)), (64, 32, 32, 32)),
    ("(64,3,32,32)->32@3x3 p1 s2", (nn.Conv2d, 3, 32, 3, dict(padding=1, stride=2)),
     (64, 3, 32, 32)),
    ("Conv1d (256,1,40)->32@5 p2", (nn.Conv1d, 1, 32, 5, dict(padding=2)), (256, 1, 40)),
    ("Conv3d (8,3,10,32,32)->16@3^3 p1", (nn.Conv3d, 3, 16, 3, dict(padding=1)),
     (8, 3, 10, 32, 32)),
]


def refdl_conv_case(spec, shape):
    cls, cin, cout, k, kw = spec
    refdl.manual_seed(0)
    m = cls(cin, cout, k, **kw)
    x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    with no_grad():
        y = m(x)
    g = np.ones_like(y)

    def fwd():
        with no_grad():                       # like torch.no_grad(): records no cache
            m(x)

    def fwdbwd():
        m(x)
        m.backward(g)
    return fwd, fwdbwd, m, y.shape


def gemm_case(m, x_shape, y_shape):
    cout = m.out_channels
    ck = m.weight.data[0].size
    nl = int(np.prod(y_shape)) // cout
    rng = np.random.default_rng(0)
    W = rng.standard_normal((cout, ck)).astype(np.float32)
    cols = rng.standard_normal((ck, nl)).astype(np.float32)
    g = rng.standard_normal((cout, nl)).astype(np.float32)
    out = np.empty((cout, nl), np.float32)
    dW = np.empty((cout, ck), np.float32)
    dcols = np.empty((ck, nl), np.float32)

    def fwd():
        np.matmul(W, cols, out=out)

    def fwdbwd():
        np.matmul(W, cols, out=out)
        np.matmul(g, cols.T, out=dW)
        np.matmul(W.T, g, out=dcols)
    return fwd, fwdbwd


def torch_conv_case(spec, shape):
    cls, cin, cout, k, kw = spec
    tcls = {nn.Conv1d: torch.nn.Conv1d, nn.Conv2d: torch.nn.Conv2d,
            nn.Conv3d: torch.nn.Conv3d}[cls]
    m = tcls(cin, cout, k, **kw)
    x = torch.randn(*shape, requires_grad=True)

    def fwd():
        with torch.no_grad():
            m(x)

    def fwdbwd():
        m.zero_grad(set_to_none=False)
        x.grad = None
        m(x).sum().backward()
    return fwd, fwdbwd


def lenet_refdl():
    refdl.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(1, 6, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(6, 16, 5), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
        nn.Linear(400, 120), nn.ReLU(), nn.Linear(120, 84), nn.ReLU(), nn.Linear(84, 10))


def lenet_step_refdl(net, x, labels, lr=0.01):
    logits = net(x)
    logp = log_softmax(logits, axis=1)
    loss = -logp[np.arange(len(labels)), labels].mean()
    grad = np.exp(logp)
    grad[np.arange(len(labels)), labels] -= 1
    net.zero_grad()
    net.backward(grad / len(labels), input_grad=False)   # as PyTorch: data needs no grad
    for p in net.parameters():
        p.data -= lr * p.grad
    return loss


def lenet_torch():
    T = torch.nn
    torch.manual_seed(0)
    return T.Sequential(
        T.Conv2d(1, 6, 5, padding=2), T.ReLU(), T.MaxPool2d(2),
        T.Conv2d(6, 16, 5), T.ReLU(), T.MaxPool2d(2), T.Flatten(),
        T.Linear(400, 120), T.ReLU(), T.Linear(120, 84), T.ReLU(), T.Linear(84, 10))


def main():
    rng = np.random.default_rng(0)
    info = [i for i in threadpool_info() if i.get("user_api") == "blas"]
    print(f"refdl compiled kernels: {ext.compiled_module() is not None} "
          f"({ext.variant_description()}; OpenMP: {ext.openmp()}); "
          f"threads: {args.threads}; numpy {np.__version__}; "
          f"torch {torch.__version__ if torch else 'not installed'}")
    for i in info:
        print(f"BLAS: {i.get('internal_api')} {i.get('version')} kernel="
              f"{i.get('architecture')} threads={i.get('num_threads')}")
    load = os.getloadavg()
    print(f"load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f} on {os.cpu_count()} cores"
          + ("  LOAD above the core count: figures measure contention"
             if load[0] > (os.cpu_count() or 1) else ""))
    cases = {}      # name -> {column: fn}

    for name, spec, shape in CONVS:
        with ext.numpy_path(False):
            cf, cfb, m, yshape = refdl_conv_case(spec, shape)
        row = {}
        row["compiled fwd"] = cf
        row["compiled f+b"] = cfb
        with ext.numpy_path(True):
            nf, nfb, _, _ = refdl_conv_case(spec, shape)
        row["numpy fwd"] = ("numpy", nf)
        row["numpy f+b"] = ("numpy", nfb)
        gf, gfb = gemm_case(m, shape, yshape)
        row["gemm fwd"] = gf
        row["gemm f+b"] = gfb
        if torch:
            tf, tfb = torch_conv_case(spec, shape)
            row["torch fwd"] = tf
            row["torch f+b"] = tfb
        # the kernels alone: im2col + col2im
        x = rng.standard_normal(shape).astype(np.float32)
        k, kw = spec[3], spec[4]
        pad = kw.get("padding", 0)
        st = kw.get("stride", 1)
        if ext.compiled_module() is not None:
            cols = ext.im2col(x, k, st, pad)        # the layer reuses its column buffer

            def i2c(x=x, k=k, st=st, pad=pad, cols=cols):
                ext.im2col(x, k, st, pad, out=cols)

            def c2i(x=x, k=k, st=st, pad=pad, cols=cols):
                ext.col2im(cols, x.shape, k, st, pad)
            row["im2col compiled"] = i2c
            row["im2col numpy"] = ("numpy", i2c)
            row["col2im compiled"] = c2i
            row["col2im numpy"] = ("numpy", c2i)
        cases[name] = row

    x = rng.standard_normal((64, 32, 32, 32)).astype(np.float32)
    pool = nn.MaxPool2d(2)
    with no_grad():
        yp = pool(x)
    gp = np.ones_like(yp)

    def pool_fwd():
        with no_grad():
            pool(x)

    def pool_fb():
        pool(x)
        pool.backward(gp)
    row = {"compiled fwd": pool_fwd, "compiled f+b": pool_fb,
           "numpy fwd": ("numpy", pool_fwd), "numpy f+b": ("numpy", pool_fb)}
    if torch:
        tx = torch.from_numpy(x).clone().requires_grad_(True)
        tp = torch.nn.MaxPool2d(2)

        def tpool_fwd():
            with torch.no_grad():
                tp(tx)

        def tpool_fb():
            tx.grad = None
            tp(tx).sum().backward()
        row["torch fwd"] = tpool_fwd
        row["torch f+b"] = tpool_fb
    cases["MaxPool2d 2x2 (64,32,32,32)"] = row

    net = lenet_refdl()
    xb = rng.standard_normal((64, 1, 28, 28)).astype(np.float32)
    lb = rng.integers(0, 10, 64)
    row = {"compiled f+b": lambda: lenet_step_refdl(net, xb, lb),
           "numpy f+b": ("numpy", lambda: lenet_step_refdl(net, xb, lb))}
    if torch:
        tnet = lenet_torch()
        opt = torch.optim.SGD(tnet.parameters(), lr=0.01)
        txb, tlb = torch.from_numpy(xb), torch.from_numpy(lb)

        def tstep():
            opt.zero_grad()
            loss = torch.nn.functional.cross_entropy(tnet(txb), tlb)
            loss.backward()
            opt.step()
        row["torch f+b"] = tstep
    cases["LeNet-5 training step, batch 64"] = row

    results = {name: {col: [] for col in row} for name, row in cases.items()}
    for r in range(args.rounds):
        for name, row in cases.items():
            for col, fn in row.items():
                use_numpy = isinstance(fn, tuple)
                f = fn[1] if use_numpy else fn
                with ext.numpy_path(use_numpy):
                    results[name][col].append(timeit(f, max_calls=5 if use_numpy else 20))
        print(f"round {r + 1}/{args.rounds} done", file=sys.stderr)
    med = {n: {c: statistics.median(v) * 1e3 for c, v in row.items()}
           for n, row in results.items()}

    # peak memory of one LeNet training step (tracemalloc sees NumPy's allocations)
    peaks = {}
    for label, use_numpy in (("compiled", False), ("numpy", True)):
        with ext.numpy_path(use_numpy):
            net = lenet_refdl()
            lenet_step_refdl(net, xb, lb)
            tracemalloc.start()
            tracemalloc.reset_peak()
            base = tracemalloc.get_traced_memory()[0]
            lenet_step_refdl(net, xb, lb)
            peaks[label] = (tracemalloc.get_traced_memory()[1] - base) / 2 ** 20
            tracemalloc.stop()

    def f(v):
        return f"{v:8.2f}" if v is not None else "       -"

    print()
    print("| case | refdl fwd ms | refdl fwd+bwd ms | NumPy path fwd+bwd ms | NumPy/compiled |"
          " GEMM bound fwd+bwd ms | GEMM/refdl | PyTorch fwd+bwd ms | refdl/PyTorch |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for name, row in med.items():
        cfb, nfb = row.get("compiled f+b"), row.get("numpy f+b")
        gfb, tfb = row.get("gemm f+b"), row.get("torch f+b")
        print(f"| {name} | {f(row.get('compiled fwd'))} | {f(cfb)} | {f(nfb)} | "
              f"{nfb / cfb:5.2f}x | {f(gfb)} | "
              f"{(f'{100 * gfb / cfb:5.0f}%' if gfb else '-')} | {f(tfb)} | "
              f"{(f'{cfb / tfb:5.2f}x' if tfb else '-')} |")
    print()
    print("| forward only | refdl ms | NumPy path ms | GEMM ms | PyTorch ms | refdl/PyTorch |")
    print("|---|---:|---:|---:|---:|---:|")
    for name, row in med.items():
        if "compiled fwd" not in row:
            continue
        cf, tf = row["compiled fwd"], row.get("torch fwd")
        print(f"| {name} | {f(cf)} | {f(row.get('numpy fwd'))} | {f(row.get('gemm fwd'))} |"
              f" {f(tf)} | {(f'{cf / tf:5.2f}x' if tf else '-')} |")
    print()
    print("| kernels alone | im2col compiled ms | im2col NumPy ms | NumPy/compiled |"
          " col2im compiled ms | col2im NumPy ms | NumPy/compiled |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for name, row in med.items():
        if "im2col compiled" in row:
            c, n = row["im2col compiled"], row["im2col numpy"]
            c2, n2 = row["col2im compiled"], row["col2im numpy"]
            print(f"| {name} | {f(c)} | {f(n)} | {n / c:5.2f}x | {f(c2)} | {f(n2)} | "
                  f"{n2 / c2:5.2f}x |")
    print()
    print(f"LeNet-5 training step (batch 64) peak traced memory: compiled path "
          f"{peaks['compiled']:.1f} MiB, NumPy path {peaks['numpy']:.1f} MiB")


if __name__ == "__main__":
    main()
