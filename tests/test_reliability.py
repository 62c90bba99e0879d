"""Bad and unusual inputs (issue 14): each case gets a clear error or PyTorch's result.

docs/reliability.md lists every case with the test that backs it. The kernel geometries
are fuzzed in tests/test_fuzz_kernels.py; here are the issue's own examples (each crashed
or gave a wrong result before the fix), the silent results, the empty batch, malformed
checkpoints and IDX files, and the command line.
"""
import json
import math
import os
import struct
import subprocess
import sys
import zipfile

import numpy as np
import pytest

import refdl
from refdl import ext, nn
from refdl.checkpoint import CheckpointError, load_checkpoint, read_checkpoint, save_checkpoint
from refdl.cli import main
from refdl.data import IDXError
from refdl.data.idx import load_mnist, read_idx, write_idx
from refdl.gradcheck import check_module

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PATHS = [pytest.param(False, id="compiled"), pytest.param(True, id="numpy")]


def _path(numpy_path):
    if not numpy_path and not ext.compiled_module():
        pytest.skip("the compiled kernels are not built")
    return ext.numpy_path(numpy_path)


def _in_subprocess(code):
    """Run ``code`` in a fresh interpreter (a crash there cannot take pytest down)."""
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120)


def _conv_loops(x, W, p, d):
    """Direct loop: y[n, o, i] = sum_{c, k} W[o, c, k] x[n, c, i + k d - p] (1-D, stride 1)."""
    N, C, L = x.shape
    O, _, K = W.shape
    Lo = L + 2 * p - d * (K - 1)
    y = np.zeros((N, O, Lo))
    for i in range(Lo):
        for k in range(K):
            j = i + k * d - p
            if 0 <= j < L:
                y[:, :, i] += x[:, :, j] @ W[:, :, k].T
    return y


# -- the kernel cases ----------------------------------------------------------------

def test_conv1d_left_padding_wider_than_the_output_row_does_not_corrupt_memory():
    """Conv1d(1, 1, 5, padding=8, dilation=4) on (1, 1, 1) aborted the interpreter."""
    r = _in_subprocess(
        "import json, numpy as np\n"
        "from refdl import nn, ext\n"
        "assert ext.available(), 'not built'\n"
        "m = nn.Conv1d(1, 1, 5, padding=8, dilation=4).to(np.float64)\n"
        "y = m(np.ones((1, 1, 1)))\n"
        "print(json.dumps([y.ravel().tolist(), m.weight.data.ravel().tolist(), "
        "float(m.bias.data[0])]))\n")
    if "not built" in r.stderr:
        pytest.skip("the compiled kernels are not built")
    assert r.returncode == 0, r.stderr[-2000:]
    y, w, b = json.loads(r.stdout)
    ref = _conv_loops(np.ones((1, 1, 1)), np.array(w).reshape(1, 1, 5), 8, 4) + b
    assert np.shape(y) == (ref.size,) == (1 + 16 - 16,)
    np.testing.assert_allclose(y, ref.ravel(), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("numpy_path", PATHS)
def test_aspp_dilated_conv2d_padding_wider_than_input_matches_loops(numpy_path):
    """DeepLab ASPP: Conv2d(4, 4, 3, padding=12, dilation=12) on (2, 4, 8, 8)."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 4, 8, 8))
    with _path(numpy_path):
        m = nn.Conv2d(4, 4, 3, padding=12, dilation=12).to(np.float64)
        y = m(x)
        g = rng.standard_normal(y.shape)
        m.backward(g)
        report = check_module(nn.Conv2d(4, 4, 3, padding=12, dilation=12).to(np.float64), x)
    W = m.weight.data
    ref = np.zeros_like(y)
    dW = np.zeros_like(W)
    for i in range(8):
        for j in range(8):
            for u in range(3):
                for v in range(3):
                    a, b = i + 12 * u - 12, j + 12 * v - 12
                    if 0 <= a < 8 and 0 <= b < 8:
                        ref[:, :, i, j] += x[:, :, a, b] @ W[:, :, u, v].T
                        dW[:, :, u, v] += g[:, :, i, j].T @ x[:, :, a, b]
    ref += m.bias.data.reshape(1, -1, 1, 1)
    np.testing.assert_allclose(y, ref, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(m.weight.grad, dW, rtol=1e-12, atol=1e-12)
    assert report.passed, str(report)


@pytest.mark.parametrize("numpy_path", PATHS)
def test_conv_transpose1d_input_gradient_with_padding_and_dilation(numpy_path):
    """ConvTranspose1d(1, 1, 3, padding=2, dilation=2) on (2, 1, 1): dx was [0, -0.218]."""
    rng = np.random.default_rng(1)
    x = rng.standard_normal((2, 1, 1))
    with _path(numpy_path):
        m = nn.ConvTranspose1d(1, 1, 3, padding=2, dilation=2).to(np.float64)
        y = m(x)
        g = rng.standard_normal(y.shape)
        dx = m.backward(g)
    # y[n, 0, i*1 + k*2 - 2] += x[n, 0, i] W[0, 0, k] with L_out = 1: only k = 1 lands
    assert y.shape == (2, 1, 1)
    W = m.weight.data[0, 0]
    np.testing.assert_allclose(dx[:, 0, 0], g[:, 0, 0] * W[1], rtol=1e-12)
    np.testing.assert_allclose(y[:, 0, 0], x[:, 0, 0] * W[1] + m.bias.data[0], rtol=1e-12)


def test_im2col_padding_2_pow_62_is_refused_not_a_segfault():
    r = _in_subprocess(
        "import numpy as np\n"
        "from refdl import ext\n"
        "try:\n"
        "    ext.im2col(np.ones((1, 1, 8)), 3, padding=2**62, out_size=(1,))\n"
        "except ValueError as e:\n"
        "    print('ValueError:', e)\n")
    assert r.returncode == 0, r.stderr[-2000:]
    assert "ValueError: im2col: geometry too large for int64 index arithmetic" in r.stdout


@pytest.mark.parametrize("numpy_path", PATHS)
def test_maxpool_window_entirely_in_padding_is_refused(numpy_path):
    """MaxPool1d(2, padding=1, dilation=3) on (1, 1, 2) returned 0 (PyTorch: -inf with the
    index 2, outside the input). refdl refuses it, naming the layer and the window."""
    with _path(numpy_path):
        with pytest.raises(ValueError, match=r"MaxPool1d\(.*window 0 .* lies entirely in "
                                             r"the padding"):
            nn.MaxPool1d(2, padding=1, dilation=3)(np.ones((1, 1, 2)))
        with pytest.raises(ValueError, match="max_pool: window 0"):
            ext.max_pool_forward(np.ones((1, 1, 2)), (2,), (2,), (1,), (3,), (1,))


@pytest.mark.parametrize("numpy_path", PATHS)
@pytest.mark.parametrize("call, err, match", [
    (lambda: ext.im2col(np.ones((1, 1, 8)), 3, padding=2.5), TypeError, "padding"),
    (lambda: ext.im2col(np.ones((1, 1, 8)), 3, padding=-1), ValueError, "non-negative"),
    (lambda: ext.im2col(np.ones((1, 1, 8)), 3, out_size=(9,)), ValueError, "do not fit"),
    (lambda: ext.im2col(np.ones((1, 1, 8)), 3, out_size=(2.0,)), TypeError, "out_size"),
    (lambda: ext.im2col(np.ones((1, 1, 8)), 0), ValueError, "kernel_size"),
    (lambda: ext.im2col(np.ones((1, 1, 8)), 3, stride=0), ValueError, "stride"),
    (lambda: ext.im2col(np.ones((1, 1, 0)), 1), ValueError, "empty spatial"),
    (lambda: ext.im2col(np.ones((1, 1, 8), dtype=np.int64), 3), TypeError, "float32"),
    (lambda: ext.col2im(np.ones((3, 5)), (1, 1, 8), 3), ValueError, "expected cols of shape"),
    (lambda: ext.max_pool_backward(np.ones((1, 1, 1)), np.array([[[5]]]), (1, 1, 2)),
     ValueError, "outside the input"),
    (lambda: ext.avg_pool_forward(np.ones((1, 1, 4)), (2,), (1,), (2,), (5,)), ValueError,
     "at most half the kernel"),
], ids=["float-padding", "negative-padding", "too-many-outputs", "float-out-size",
        "zero-kernel", "zero-stride", "empty-spatial", "int-dtype", "col2im-cols-shape",
        "maxpool-index-outside", "avgpool-padding-over-half"])
def test_ext_refuses_bad_geometry_before_the_kernels(numpy_path, call, err, match):
    with _path(numpy_path):
        with pytest.raises(err, match=match):
            call()


def test_kernels_refuse_inconsistent_buffers_themselves():
    K = ext.compiled_module()
    if K is None:
        pytest.skip("the compiled kernels are not built")
    with pytest.raises(ValueError, match="cols has shape"):
        K.col2im3d(np.ones((2, 2)), np.zeros((1, 1, 1, 1, 4)), 1, 1, 2, 1, 1, 1, 0, 0, 0,
                   1, 1, 1, 1, 1, 3)
    with pytest.raises(ValueError, match="inconsistent"):
        K.maxpool3d_backward(np.ones((2, 2)), np.zeros((1, 2), dtype=np.int64),
                             np.zeros((2, 3)))


# -- silent results ---------------------------------------------------------------------------

@pytest.mark.parametrize("max_norm", [-1.0, float("nan")])
def test_clip_grad_norm_refuses_negative_or_nan_max_norm(max_norm):
    p = nn.Parameter(np.ones(2))
    p.grad = np.array([3.0, 4.0])
    with pytest.raises(ValueError, match="max_norm must be non-negative"):
        nn.utils.clip_grad_norm_([p], max_norm)
    np.testing.assert_array_equal(p.grad, [3.0, 4.0])        # untouched, not flipped


def test_clip_grad_norm_zero_and_positive_still_work():
    p = nn.Parameter(np.ones(2))
    p.grad = np.array([3.0, 4.0])
    assert nn.utils.clip_grad_norm_([p], 1.0) == pytest.approx(5.0)
    np.testing.assert_allclose(p.grad, [3.0 / (5 + 1e-6), 4.0 / (5 + 1e-6)])


@pytest.mark.parametrize("target, match", [
    ([0.5, 1.5], r"target must be in \[0, 1\]"), ([-0.1, 0.5], r"target must be in \[0, 1\]"),
    ([np.nan, 0.5], "target contains NaN")], ids=["above-1", "below-0", "nan"])
def test_bce_loss_rejects_targets_outside_0_1(target, match):
    with pytest.raises(ValueError, match="BCELoss.*" + match):
        nn.BCELoss()(np.array([0.3, 0.6]), np.array(target))


def test_bce_loss_accepts_soft_targets_in_0_1():
    x, t = np.array([0.3, 0.6]), np.array([0.0, 0.25])
    ref = -np.mean(t * np.log(x) + (1 - t) * np.log(1 - x))
    assert nn.BCELoss()(x, t) == pytest.approx(ref, rel=1e-12)


@pytest.mark.parametrize("make, match", [
    (lambda: nn.LeakyReLU(float("nan")), "LeakyReLU: negative_slope must be a finite"),
    (lambda: nn.LeakyReLU(float("inf")), "LeakyReLU: negative_slope must be a finite"),
    (lambda: nn.Softplus(beta=0), "Softplus: beta must be a finite non-zero"),
    (lambda: nn.Softplus(beta=float("nan")), "Softplus: beta must be a finite non-zero"),
], ids=["leakyrelu-nan", "leakyrelu-inf", "softplus-beta-0", "softplus-beta-nan"])
def test_activation_parameters_that_make_no_function_are_refused(make, match):
    with pytest.raises(ValueError, match=match):
        make()


# -- the empty batch (N = 0), as in PyTorch ----------------------------------------------------

EMPTY = [
    ("InstanceNorm1d", lambda: nn.InstanceNorm1d(3), (0, 3, 5), (0, 3, 5)),
    ("InstanceNorm2d", lambda: nn.InstanceNorm2d(3, affine=True), (0, 3, 4, 4), (0, 3, 4, 4)),
    ("GroupNorm", lambda: nn.GroupNorm(1, 4), (0, 4, 3, 3), (0, 4, 3, 3)),
    ("Flatten", lambda: nn.Flatten(), (0, 3, 4, 4), (0, 48)),
    ("BatchNorm2d-eval", lambda: nn.BatchNorm2d(3).eval(), (0, 3, 4, 4), (0, 3, 4, 4)),
    ("BatchNorm2d-train", lambda: nn.BatchNorm2d(3), (0, 3, 4, 4), (0, 3, 4, 4)),
    ("LayerNorm", lambda: nn.LayerNorm(4), (0, 3, 4), (0, 3, 4)),
    ("Linear", lambda: nn.Linear(3, 2), (0, 3), (0, 2)),
    ("Conv1d", lambda: nn.Conv1d(2, 3, 3, padding=1), (0, 2, 5), (0, 3, 5)),
    ("Conv2d", lambda: nn.Conv2d(2, 3, 3, groups=1), (0, 2, 5, 5), (0, 3, 3, 3)),
    ("Conv3d", lambda: nn.Conv3d(2, 2, 2, groups=2), (0, 2, 3, 3, 3), (0, 2, 2, 2, 2)),
    ("ConvTranspose2d", lambda: nn.ConvTranspose2d(2, 3, 3, stride=2), (0, 2, 3, 3),
     (0, 3, 7, 7)),
    ("MaxPool2d", lambda: nn.MaxPool2d(2), (0, 3, 4, 4), (0, 3, 2, 2)),
    ("AvgPool2d", lambda: nn.AvgPool2d(2), (0, 3, 4, 4), (0, 3, 2, 2)),
    ("AdaptiveAvgPool2d", lambda: nn.AdaptiveAvgPool2d(2), (0, 3, 4, 4), (0, 3, 2, 2)),
    ("AdaptiveMaxPool2d", lambda: nn.AdaptiveMaxPool2d(2), (0, 3, 4, 4), (0, 3, 2, 2)),
    ("ReLU", lambda: nn.ReLU(), (0, 3), (0, 3)),
    ("Dropout", lambda: nn.Dropout(0.5), (0, 3), (0, 3)),
]


@pytest.mark.parametrize("numpy_path", PATHS)
@pytest.mark.parametrize("name, make, shape, out_shape", EMPTY, ids=[e[0] for e in EMPTY])
def test_empty_batch_works_as_in_pytorch(numpy_path, name, make, shape, out_shape):
    with _path(numpy_path):
        m = make().to(np.float64)
        before = {k: np.array(v, copy=True) for k, v in m.state_dict().items()}
        with refdl.enable_grad():                     # eval-mode layers record too
            y = m(np.zeros(shape))
        assert y.shape == out_shape
        dx = m.backward(np.zeros(out_shape))
        assert dx.shape == shape
        for p in m.parameters():
            np.testing.assert_array_equal(p.grad, 0)         # no example, no gradient
        after = m.state_dict()
        for k, v in before.items():
            if k != "num_batches_tracked":                   # running stats untouched
                np.testing.assert_array_equal(after[k], v)


@pytest.mark.parametrize("loss, args", [
    (nn.MSELoss(), (np.zeros(0), np.zeros(0))),
    (nn.CrossEntropyLoss(), (np.zeros((0, 3)), np.zeros(0, dtype=np.int64))),
], ids=["MSELoss", "CrossEntropyLoss"])
def test_empty_batch_mean_loss_is_nan_as_in_pytorch(loss, args):
    assert math.isnan(loss(*args))                  # mean over no element (PyTorch: nan)
    assert loss.backward().shape == args[0].shape


# -- checkpoints ----------------------------------------------------------------------------

def _model_and_opt():
    refdl.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2)).to(np.float64)
    opt = refdl.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    x = np.ones((2, 3))
    model(x)
    model.backward(np.ones((2, 2)))
    opt.step()
    return model, opt


@pytest.fixture
def saved(tmp_path):
    model, opt = _model_and_opt()
    path = tmp_path / "ck.npz"
    save_checkpoint(path, model, opt, epoch=3)
    return path


def _rewrite(path, edit_meta=None, edit_arrays=None):
    """Rewrite a checkpoint with its JSON metadata or arrays changed (a crafted file)."""
    with np.load(path) as z:
        meta = json.loads(bytes(z["__meta__"]).decode())
        arrays = {k: z[k] for k in z.files if k != "__meta__"}
    if edit_meta:
        meta = edit_meta(meta)
    if edit_arrays:
        edit_arrays(arrays)
    text = meta if isinstance(meta, str) else json.dumps(meta)
    np.savez(path, __meta__=np.frombuffer(text.encode(), dtype=np.uint8), **arrays)


def _find(meta, key):
    """The [key, value] pair of the top-level entry ``key`` in the encoded metadata."""
    for kv in meta["__dict__"]:
        if kv[0] == key:
            return kv
    raise KeyError(key)


def _set(key, value):
    def edit(meta):
        _find(meta, key)[1] = value
        return meta
    return edit


def _first_array_ref(obj):
    if isinstance(obj, dict):
        if "__array__" in obj:
            return obj
        obj = list(obj.values())
    if isinstance(obj, list):
        for v in obj:
            r = _first_array_ref(v)
            if r is not None:
                return r
    return None


def _bad_ref(value):
    def edit(meta):
        _first_array_ref(_find(meta, "model")[1])["__array__"] = value
        return meta
    return edit


def _lr(value):
    def edit(meta):
        opt = _find(meta, "optimizer")[1]
        groups = next(kv for kv in opt["__dict__"] if kv[0] == "param_groups")[1]
        lr = next(kv for kv in groups[0]["__dict__"] if kv[0] == "lr")
        lr[1] = value
        return meta
    return edit


def _wrong_shape(arrays):
    for k, a in arrays.items():
        if a.shape == (4, 3):                   # the first Linear's weight
            arrays[k] = np.zeros((3, 4))
            return
    raise AssertionError("no (4, 3) array")


MALFORMED = [
    ("npy-saved-as-npz", lambda p: np.save(open(p, "wb"), np.zeros(3)), "not an .npz archive"),
    ("random-bytes", lambda p: p.write_bytes(np.random.default_rng(0).bytes(300)),
     "not an .npz archive"),
    ("empty-file", lambda p: p.write_bytes(b""), "not an .npz archive"),
    ("truncated", lambda p: p.write_bytes(p.read_bytes()[:200]), "corrupt or truncated"),
    ("zip-without-meta", lambda p: zipfile.ZipFile(p, "w").writestr("x.npy", b"1"),
     "no __meta__"),
    ("deep-json", lambda p: _rewrite(p, lambda m: "[" * 100000 + "]" * 100000),
     "nested more than"),
    ("array-index-out-of-range", lambda p: _rewrite(p, _bad_ref(99)), "names none of the"),
    ("array-index-negative", lambda p: _rewrite(p, _bad_ref(-1)), "names none of the"),
    ("array-index-string", lambda p: _rewrite(p, _bad_ref("a0")), "names none of the"),
    ("array-index-bool", lambda p: _rewrite(p, _bad_ref(True)), "names none of the"),
    ("unknown-entry", lambda p: _rewrite(p, _set("history", {"__evil__": 1})), "unknown entry"),
    ("dict-not-pairs", lambda p: _rewrite(p, _set("history", {"__dict__": [1, 2]})),
     "list of \\[key, value\\] pairs"),
    ("wrong-shape-behind-valid-signature", lambda p: _rewrite(p, edit_arrays=_wrong_shape),
     "the signature says shape"),
    ("epoch-string", lambda p: _rewrite(p, _set("epoch", "three")), "epoch must be"),
    ("epoch-negative", lambda p: _rewrite(p, _set("epoch", -2)), "epoch must be"),
    ("lr-string", lambda p: _rewrite(p, _lr("fast")), "not a finite number"),
    ("lr-nan", lambda p: _rewrite(p, _lr({"__float__": "nan"})), "not a finite number"),
    ("signature-not-a-dict", lambda p: _rewrite(p, _set("signature", [1])), "signature"),
    ("meta-not-json", lambda p: _rewrite(p, lambda m: "{not json"), "corrupt or truncated"),
]


@pytest.mark.parametrize("name, corrupt, reason", MALFORMED, ids=[m[0] for m in MALFORMED])
def test_malformed_checkpoint_gives_checkpoint_error_with_path_and_reason(saved, name,
                                                                          corrupt, reason):
    corrupt(saved)
    model, opt = _model_and_opt()
    before = {k: v.copy() for k, v in model.state_dict().items()}
    with pytest.raises(CheckpointError, match=reason) as exc:
        load_checkpoint(saved, model, opt)
    assert str(saved) in str(exc.value)
    for k, v in model.state_dict().items():
        np.testing.assert_array_equal(v, before[k])


def test_loading_is_transactional_when_the_optimizer_does_not_fit(saved):
    """Today an optimiser mismatch raised after the model's weights were overwritten."""
    model = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2)).to(np.float64)
    before = {k: v.copy() for k, v in model.state_dict().items()}
    opt = refdl.optim.SGD(list(model.parameters())[:2], lr=0.5, momentum=0.9)
    with pytest.raises(CheckpointError, match=str(saved)):
        load_checkpoint(saved, model, opt)
    for k, v in model.state_dict().items():
        np.testing.assert_array_equal(v, before[k])
    assert opt.param_groups[0]["lr"] == 0.5


def test_next_save_removes_the_temporary_file_of_an_interrupted_save(saved):
    stale = saved.parent / f".{saved.name}.abc123.tmp"        # what a kill -9 leaves
    stale.write_bytes(b"half a checkpoint")
    model, opt = _model_and_opt()
    save_checkpoint(saved, model, opt, epoch=4)
    assert not stale.exists()
    assert read_checkpoint(saved)["epoch"] == 4


# -- IDX files --------------------------------------------------------------------------------

def test_idx_header_whose_sizes_overflow_int64_is_refused(tmp_path):
    p = tmp_path / "big.idx"
    # four sizes of 2**32 - 1: their product wraps around in int64
    p.write_bytes(bytes([0, 0, 0x08, 4]) + struct.pack(">4I", *[2 ** 32 - 1] * 4) + b"\0" * 8)
    with pytest.raises(IDXError, match="more than any file can hold"):
        read_idx(p)


def test_idx_header_product_that_wraps_to_the_file_size_is_refused(tmp_path):
    # 2**32 * 2**32 = 2**64 wraps to 0 in int64: an empty payload would "fit"
    p = tmp_path / "wrap.idx"
    p.write_bytes(bytes([0, 0, 0x08, 2]) + struct.pack(">2I", 2 ** 32 - 1, 2 ** 32 - 1))
    with pytest.raises(IDXError, match="more than any file can hold|truncated"):
        read_idx(p)


def test_mnist_folder_with_zero_images_is_refused(tmp_path):
    write_idx(tmp_path / "train-images-idx3-ubyte", np.zeros((0, 28, 28), np.uint8))
    write_idx(tmp_path / "train-labels-idx1-ubyte", np.zeros((0,), np.uint8))
    with pytest.raises(IDXError, match="0 images"):
        load_mnist(tmp_path, train=True)


# -- the command line ------------------------------------------------------------------------

def _run(capsys, *argv):
    rc = main(list(argv))
    out, err = capsys.readouterr()
    return rc, out, err


@pytest.mark.parametrize("argv, message", [
    (["--lr", "-0.1"], "--lr must be a non-negative number"),
    (["--lr", "nan"], "--lr must be a non-negative number"),
    (["--momentum", "-0.9"], "--momentum must be a non-negative number"),
    (["--weight-decay=-1e-4"], "--weight-decay must be a non-negative number"),
    (["--seed", "-1"], "--seed must be an integer in"),
    (["--clip-grad-norm", "-1"], "--clip-grad-norm must be a non-negative number"),
    (["--out", "/dev/null"], "exists and is not a folder"),
    (["--out", "/proc/refdl-cannot-write-here/run"], "cannot write there"),
], ids=["lr-negative", "lr-nan", "momentum-negative", "weight-decay-negative",
        "seed-negative", "clip-grad-norm-negative", "out-dev-null", "out-unwritable"])
def test_cli_refuses_bad_training_options_without_a_traceback(tmp_path, capsys, monkeypatch,
                                                              argv, message):
    monkeypatch.chdir(tmp_path)
    rc, out, err = _run(capsys, "train", "--model", "mlp", "--epochs", "1", *argv)
    assert rc == 2 and message in err and "Traceback" not in err, err
    assert "epoch 1/1" not in out                    # refused before training


def test_cli_out_that_is_a_file_is_refused_before_training(tmp_path, capsys):
    f = tmp_path / "a-file"
    f.write_text("keep me")
    rc, out, err = _run(capsys, "train", "--model", "mlp", "--epochs", "1", "--out", str(f))
    assert rc == 2 and "exists and is not a folder" in err and "epoch 1/1" not in out
    assert f.read_text() == "keep me"


def _train(capsys, d, *argv):
    return _run(capsys, "train", "--model", "mlp", "--out", d, "--no-plots", "--quiet", *argv)


def test_cli_resume_reads_the_runs_config(tmp_path, capsys):
    d = str(tmp_path / "r")
    assert _train(capsys, d, "--epochs", "1", "--optimizer", "sgd", "--lr", "0.02",
                  "--scheduler", "none", "--batch-size", "64")[0] == 0
    rc, _, err = _run(capsys, "train", "--out", d, "--epochs", "2", "--resume", "--no-plots",
                      "--quiet")
    assert rc == 0, err                             # no "optimizer state is from SGD" error
    cfg = json.loads((tmp_path / "r" / "config.json").read_text())
    assert (cfg["optimizer"], cfg["lr"], cfg["batch_size"], cfg["epochs"]) == \
        ("sgd", 0.02, 64, 2)
    h = json.loads((tmp_path / "r" / "history.json").read_text())
    assert h["lr"] == [0.02, 0.02]


def test_cli_resume_refuses_an_explicit_conflicting_option(tmp_path, capsys):
    d = str(tmp_path / "r")
    assert _train(capsys, d, "--epochs", "1", "--lr", "0.01")[0] == 0
    rc, _, err = _run(capsys, "train", "--out", d, "--epochs", "2", "--resume", "--lr", "0.5")
    assert rc == 2 and "--lr 0.5 conflicts with the run" in err and "--lr 0.01" in err
    assert "Traceback" not in err


def test_cli_extended_cosine_run_is_replanned_never_zero_then_rising(tmp_path, capsys):
    d = str(tmp_path / "r")
    assert _train(capsys, d, "--epochs", "3", "--scheduler", "cosine")[0] == 0
    rc, _, err = _train(capsys, d, "--epochs", "6", "--resume")
    assert rc == 0, err
    lr = json.loads((tmp_path / "r" / "history.json").read_text())["lr"]
    base = lr[0]
    # epochs 1-3 on the 3-epoch cosine, epochs 4-6 on the 6-epoch cosine (closed form)
    want = [base * (1 + math.cos(math.pi * t / 3)) / 2 for t in range(3)] + \
        [base * (1 + math.cos(math.pi * t / 6)) / 2 for t in range(3, 6)]
    np.testing.assert_allclose(lr, want, rtol=1e-12)
    assert all(v > 0 for v in lr) and all(a > b for a, b in zip(lr[3:], lr[4:]))


def test_cli_extended_onecycle_run_is_refused_with_a_message(tmp_path, capsys):
    d = str(tmp_path / "r")
    assert _train(capsys, d, "--epochs", "2", "--scheduler", "onecycle")[0] == 0
    before = (tmp_path / "r" / "checkpoint.npz").read_bytes()
    rc, _, err = _train(capsys, d, "--epochs", "3", "--resume")
    assert rc == 2 and "one-cycle schedule was planned for" in err and "Traceback" not in err
    assert (tmp_path / "r" / "checkpoint.npz").read_bytes() == before
