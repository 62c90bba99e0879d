"""refdl.set_num_threads / get_num_threads and the threading model (refdl/threads.py).

No timing assertions: these check that the settings reach the BLAS pool (read back
independently through threadpoolctl) and the kernels' team, and that results do not
depend on the thread count.
"""
import os

import numpy as np
import pytest
from threadpoolctl import threadpool_info

import refdl
from refdl import ext, nn, threads
from refdl.functional import winograd as wg

from conftest import KERNEL_VARIANTS, kernel_variant_module


def blas_threads():
    return {i["filepath"]: i["num_threads"] for i in threadpool_info()
            if i["user_api"] == "blas"}


@pytest.fixture(autouse=True)
def restore_threads():
    before = refdl.get_num_threads()
    yield
    refdl.set_num_threads(before)


def test_exported_with_pytorch_names():
    assert refdl.set_num_threads is threads.set_num_threads
    assert refdl.get_num_threads is threads.get_num_threads
    assert "set_num_threads" in refdl.__all__ and "get_num_threads" in refdl.__all__


@pytest.mark.parametrize("n", [1, 2, 3])
def test_set_then_get_and_the_blas_pool_follows(n):
    refdl.set_num_threads(n)
    assert refdl.get_num_threads() == n
    sizes = blas_threads()
    assert sizes and all(v == n for v in sizes.values())


@pytest.mark.parametrize("variant", KERNEL_VARIANTS)
def test_kernels_team_follows(variant):
    # every loaded build follows the setting, the one in use and the other one alike
    K = kernel_variant_module(variant)
    refdl.set_num_threads(3)
    assert K in threads._kernels()
    assert K.get_threading() == (3, threads.KERNEL_GRAIN)
    refdl.set_num_threads(1)
    assert K.get_threading()[0] == 1


def test_a_build_loaded_later_gets_the_setting():
    """REFDL_KERNELS=baseline loads the baseline build; the AVX2 build, loaded after
    set_num_threads(3), starts with a team of 3 (not OpenMP's default)."""
    import subprocess
    import sys
    kernel_variant_module("avx2")          # skips where this CPU or compiler has no AVX2
    code = ("import refdl; from refdl import ext, threads; refdl.set_num_threads(3); "
            "import sys; assert 'refdl._ext._kernels_avx2' not in sys.modules; "
            "m = ext.load_variant('avx2'); print(m.get_threading()[0], "
            "len(threads._kernels()))")
    root = os.path.dirname(os.path.dirname(os.path.abspath(refdl.__file__)))
    out = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True,
                         text=True, check=True,
                         env=dict(os.environ, REFDL_KERNELS="baseline")).stdout.split()
    assert out == ["3", "2"]           # _kernels and _kernels_avx2 (Winograd's included)


@pytest.mark.parametrize("bad,err", [(0, ValueError), (-2, ValueError), (1.5, TypeError),
                                     ("2", TypeError), (True, TypeError), (None, TypeError)])
def test_bad_counts_are_refused(bad, err):
    refdl.set_num_threads(2)
    with pytest.raises(err, match="set_num_threads"):
        refdl.set_num_threads(bad)
    assert refdl.get_num_threads() == 2


def test_numpy_integer_is_accepted():
    refdl.set_num_threads(np.int64(2))
    assert refdl.get_num_threads() == 2 and isinstance(refdl.get_num_threads(), int)


def test_serial_below_runs_small_products_on_one_thread_and_restores():
    refdl.set_num_threads(2)
    with threads.serial_below(threads.GEMM_GRAIN - 1):
        assert set(blas_threads().values()) == {1}
    assert set(blas_threads().values()) == {2}
    with threads.serial_below(threads.GEMM_GRAIN):
        assert set(blas_threads().values()) == {2}
    refdl.set_num_threads(1)
    with threads.serial_below(0):
        assert set(blas_threads().values()) == {1}
    assert set(blas_threads().values()) == {1}


def test_serial_below_restores_after_an_exception():
    refdl.set_num_threads(2)
    with pytest.raises(KeyError):
        with threads.serial_below(1):
            raise KeyError("x")
    assert set(blas_threads().values()) == {2}


def test_openmp_wait_policy_is_not_left_in_the_environment():
    # refdl asks its OpenMP runtime for a short wait only while the kernels load
    if any(k in os.environ for k in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "KMP_BLOCKTIME")):
        pytest.skip("the user set an OpenMP wait policy")
    import refdl._ext  # noqa: F401
    assert "OMP_WAIT_POLICY" not in os.environ and "GOMP_SPINCOUNT" not in os.environ
    with refdl._ext.passive_openmp():
        assert os.environ["GOMP_SPINCOUNT"] == refdl._ext.SPINCOUNT
        assert os.environ["OMP_WAIT_POLICY"] == "PASSIVE"
    assert "OMP_WAIT_POLICY" not in os.environ and "GOMP_SPINCOUNT" not in os.environ


def test_a_users_openmp_wait_policy_is_left_alone(monkeypatch):
    import refdl._ext
    monkeypatch.setenv("GOMP_SPINCOUNT", "7")
    with refdl._ext.passive_openmp():
        assert os.environ["GOMP_SPINCOUNT"] == "7" and "OMP_WAIT_POLICY" not in os.environ
    assert os.environ["GOMP_SPINCOUNT"] == "7"


def _import_refdl_in_a_child(prelude, env_extra=None, drop=("OPENBLAS_THREAD_TIMEOUT",)):
    """Runs ``prelude`` then ``import refdl`` in a fresh interpreter that records the
    environment's OPENBLAS_THREAD_TIMEOUT at the moment NumPy is first imported; returns
    (that value, refdl's blas_thread_timeout(), the variable after the import)."""
    import json
    import subprocess
    import sys
    code = (
        "import builtins, json, os, sys\n"
        "seen = []\n"
        "real = builtins.__import__\n"
        "def spy(name, *a, **k):\n"
        "    if name.split('.')[0] == 'numpy' and 'numpy' not in sys.modules and not seen:\n"
        "        seen.append(os.environ.get('OPENBLAS_THREAD_TIMEOUT'))\n"
        "    return real(name, *a, **k)\n"
        "builtins.__import__ = spy\n"
        + prelude + "\n"
        "import refdl\n"
        "print(json.dumps([seen[0] if seen else 'not imported', "
        "list(refdl.threads.blas_thread_timeout()), "
        "os.environ.get('OPENBLAS_THREAD_TIMEOUT')]))\n")
    env = {k: v for k, v in os.environ.items() if k not in drop}
    env.update(env_extra or {})
    root = os.path.dirname(os.path.dirname(os.path.abspath(refdl.__file__)))
    out = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True,
                         text=True, env=env)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_import_refdl_shortens_the_blas_workers_spin_while_numpy_loads():
    """OpenBLAS reads OPENBLAS_THREAD_TIMEOUT once, when NumPy loads it: ``import refdl``
    must set it before anything imports NumPy, and leave the environment as it was."""
    at_load, reported, after = _import_refdl_in_a_child("")
    assert at_load == str(threads.BLAS_THREAD_TIMEOUT)
    assert reported == [threads.BLAS_THREAD_TIMEOUT, "refdl"]
    assert after is None                      # child processes do not inherit it


def test_the_users_blas_timeout_and_an_earlier_numpy_are_reported_not_overridden():
    at_load, reported, after = _import_refdl_in_a_child(
        "", env_extra={"OPENBLAS_THREAD_TIMEOUT": "24"})
    assert (at_load, reported, after) == ("24", [24, "user"], "24")
    at_load, reported, after = _import_refdl_in_a_child("import numpy")
    assert (at_load, reported, after) == (None, [28, "default"], None)
    at_load, reported, after = _import_refdl_in_a_child(
        "", env_extra={"OPENBLAS_THREAD_TIMEOUT": "soon"})
    assert (at_load, reported, after) == ("soon", [None, "user"], "soon")


def _run_all(n, use_numpy=False):
    """Outputs of the threaded pieces at n threads: im2col/col2im and pooling above the
    parallel grain, a Conv2d on the im2col and on the Winograd path, forward+backward."""
    refdl.set_num_threads(n)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((8, 16, 24, 24)).astype(np.float32)   # 16*9*8*576 > grain
    out = []
    with ext.numpy_path(use_numpy):
        cols = ext.im2col(x, 3, 1, 1)
        out += [cols.copy(), ext.col2im(cols, x.shape, 3, 1, 1)]
        y, idx = ext.max_pool_forward(x, (2, 2), (2, 2), (0, 0), (1, 1), (12, 12))
        out += [y, idx, ext.max_pool_backward(np.ones_like(y), idx, x.shape)]
        for algo in ("im2col", "winograd"):
            refdl.manual_seed(0)
            m = nn.Conv2d(16, 16, 3, padding=1)
            m.algorithm = algo
            y = m(x)
            dx = m.backward(np.ones_like(y))
            out += [y, dx, m.weight.grad.copy(), m.bias.grad.copy()]
    return out


@pytest.mark.parametrize("variant", ["numpy"] + KERNEL_VARIANTS)
def test_results_do_not_depend_on_the_thread_count(variant, monkeypatch):
    use_numpy = variant == "numpy"
    if not use_numpy:
        monkeypatch.setattr(ext, "_K", kernel_variant_module(variant))
    one = _run_all(1, use_numpy)
    two = _run_all(2, use_numpy)
    assert len(one) == len(two) == 13
    for a, b in zip(one, two):
        # the kernels split the batch: bit-for-bit; BLAS splits rows/columns of the
        # product, never the sum, so the GEMMs agree exactly as well
        assert np.array_equal(a, b)


def test_winograd_runs_on_the_kernels_team():
    # one team for every convolution: Winograd's chunks run in the kernels refdl.ext
    # selected, whose team follows set_num_threads
    K = wg._kernels()
    if K is None:
        pytest.skip("compiled kernels not built")
    refdl.set_num_threads(2)
    assert K is ext.compiled_module() and K in threads._kernels()
    assert K.get_threading()[0] == 2


# -- the command line: refdl train --threads N, refdl bench --threads N / --quick ----------

def _cli(capsys, *argv):
    from refdl.cli import main
    rc = main(list(argv))
    out, err = capsys.readouterr()
    return rc, out, err


def test_train_threads_option_sets_the_pools(tmp_path, capsys):
    refdl.set_num_threads(2)
    rc, out, err = _cli(capsys, "train", "--model", "mlp", "--epochs", "1", "--no-plots",
                        "--threads", "1", "--out", str(tmp_path / "r"))
    assert rc == 0, err
    assert refdl.get_num_threads() == 1
    assert set(blas_threads().values()) == {1}
    assert "seed 0; " in out and ", 1 thread\n" in out


@pytest.mark.parametrize("cmd", ["train", "bench"])
def test_bad_threads_option_is_a_clean_error(capsys, cmd, tmp_path):
    rc, out, err = _cli(capsys, cmd, "--threads", "0")
    assert rc == 2 and "--threads must be a positive integer, got 0" in err
    assert "Traceback" not in err


@pytest.mark.parametrize("load,expected", [(0.05, 2), (0.6, 1), (1.2, 1), (5.0, 1)])
def test_auto_threads_leave_busy_cores_alone(monkeypatch, load, expected):
    """Without /proc/stat: the 1-minute load average decides."""
    monkeypatch.setattr(os, "cpu_count", lambda: 2)
    monkeypatch.setattr(threads, "busy_cores", lambda interval=0.1: None)
    monkeypatch.setattr(os, "getloadavg", lambda: (load, load, load))
    n, why = threads.auto_num_threads()
    assert n == expected and "2 cores" in why and f"{load:.2f}" in why


@pytest.mark.parametrize("busy,expected", [(0.1, 2), (0.7, 1), (1.3, 1), (2.0, 1)])
def test_auto_threads_follow_the_cores_busy_now(monkeypatch, busy, expected):
    """With /proc/stat: what other processes use now, not a minute ago."""
    monkeypatch.setattr(os, "cpu_count", lambda: 2)
    monkeypatch.setattr(threads, "busy_cores", lambda interval=0.1: busy)
    monkeypatch.setattr(os, "getloadavg", lambda: (0.0, 0.0, 0.0))
    n, why = threads.auto_num_threads()
    assert n == expected and "2 cores" in why and f"{busy:.1f} busy" in why


def test_busy_cores_reads_two_samples_of_proc_stat(monkeypatch):
    """busy = (1 - idle share of the jiffies between two reads of /proc/stat) x cores, with
    iowait counted as idle; independent of what this machine is doing."""
    import builtins
    import io
    # cpu  user nice system idle iowait irq softirq steal
    samples = iter(["cpu  100 0 50 800 50 0 0 0 0 0\n",
                    "cpu  250 0 100 900 80 0 0 0 0 0\n"])
    real_open = builtins.open
    monkeypatch.setattr(builtins, "open", lambda path, *a, **k: io.StringIO(next(samples))
                        if path == "/proc/stat" else real_open(path, *a, **k))
    monkeypatch.setattr(os, "cpu_count", lambda: 2)
    # between the reads: 330 jiffies, of which 100 idle and 30 iowait -> 200/330 busy
    assert threads.busy_cores(0.0) == pytest.approx(2 * 200 / 330)
    monkeypatch.setattr(builtins, "open", lambda *a, **k: (_ for _ in ()).throw(OSError()))
    assert threads.busy_cores(0.0) is None


def test_bench_passes_threads_and_quick_to_scripts_that_take_them(tmp_path):
    from argparse import Namespace

    from refdl.cli.bench import _bench_flags
    takes = tmp_path / "bench_a.py"
    takes.write_text('p.add_argument("--threads")\np.add_argument("--quick")\n')
    plain = tmp_path / "bench_b.py"
    plain.write_text("print(1)\n")
    args = Namespace(threads=2, quick=True)
    assert _bench_flags(takes, args) == ["--threads", "2", "--quick"]
    assert _bench_flags(plain, args) == []
    assert _bench_flags(takes, Namespace(threads=None, quick=False)) == []


def test_winograd_chunks_on_the_team_give_identical_results(monkeypatch):
    # chunks of one image on a team of 1 and of 3 threads: the same numbers, bit for bit
    # (each chunk is computed alike; dW sums the chunks in order)
    monkeypatch.setattr(wg, "CHUNK_BYTES", 1)
    rng = np.random.default_rng(3)
    x = rng.standard_normal((5, 4, 7, 6)).astype(np.float32)
    w = rng.standard_normal((3, 4, 3, 3)).astype(np.float32)
    b = rng.standard_normal(3).astype(np.float32)
    g = rng.standard_normal((5, 3, 7, 6)).astype(np.float32)
    pads = ((1, 1), (1, 1))
    res = []
    for n in (1, 3, 1):
        refdl.set_num_threads(n)
        bufs = {}
        y, V, U = wg.conv2d(x, w, b, pads, buffers=bufs)
        if wg._compiled():
            assert bufs["team"].shape[0] >= min(n, 5)             # a scratch row per thread
        dx, dW = wg.conv2d_backward(g, V, U, x.shape, pads, buffers=bufs)
        res.append((y, dx, dW))
        assert refdl.get_num_threads() == n and set(blas_threads().values()) == {n}
    for a, c in zip(res[0], res[1]):
        assert np.array_equal(a, c)
    ref = wg.conv2d(x.astype(np.float64), w.astype(np.float64), b.astype(np.float64),
                    pads)[0]
    assert np.allclose(res[1][0], ref, rtol=1e-4, atol=1e-4)


def test_linear_runs_small_products_on_one_blas_thread(monkeypatch):
    # Linear's three products (forward; dW and dx in backward) go through serial_below
    # with their multiply-adds, so a small layer never wakes the BLAS pool
    import refdl.nn.linear as linear
    seen = []

    class Spy(threads.serial_below):
        def __enter__(self):
            seen.append((self._macs, set(blas_threads().values())))
            r = super().__enter__()
            seen[-1] += (set(blas_threads().values()),)
            return r

        def __init__(self, macs):
            super().__init__(macs)
            self._macs = macs

    monkeypatch.setattr(linear, "serial_below", Spy)
    refdl.set_num_threads(2)
    m = nn.Linear(40, 12)
    x = np.ones((64, 40), np.float32)
    m.backward(np.ones_like(m(x)))
    assert [s[0] for s in seen] == [64 * 40 * 12] * 2
    assert all(s[2] == {1} for s in seen)            # inside: one thread
    assert set(blas_threads().values()) == {2}       # and restored


@pytest.mark.skipif(ext.compiled_module() is None, reason="the compiled kernels are not built")
def test_chunked_conv_calls_blas_from_its_threads_with_a_pool_of_one(monkeypatch):
    # refdl.ext.conv_forward/backward call SciPy's BLAS from the kernels' OpenMP threads:
    # a BLAS pool of its own would compete with them, so the pools are at 1 during the call
    K = ext.compiled_module()
    inside = []
    for name in ("conv_forward", "conv_backward"):
        fn = getattr(K, name)
        monkeypatch.setattr(K, name, lambda *a, _f=fn: (
            inside.append(set(blas_threads().values())), _f(*a))[1])
    refdl.set_num_threads(2)
    with ext.numpy_path(False):
        m = nn.Conv2d(3, 4, 3)
        m.algorithm = "im2col"          # float32 would run the direct forward (no BLAS)
        m.backward(np.ones_like(m(np.ones((2, 3, 8, 8), np.float32))))
    assert inside == [{1}, {1}]
    assert set(blas_threads().values()) == {2}
